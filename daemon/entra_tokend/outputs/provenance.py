"""Provenance: a token file is adopted at start-up only if this daemon wrote it, for exactly
this token's configuration, and nobody changed it since.

After each successful write the daemon records, in ``output_dir/.entra-tokend-state/`` (mode
0700, owned by the daemon's uid, written with the same atomic writer), one small JSON record per
token: a fingerprint of each part of the configuration that determines the token file (identity:
tenant, client, authority host; scope; format and its options; path; file mode, owner, group —
kept apart so that the log names what changed), the SHA-256 of the bytes written, the token's
issue and expiry times. At start-up (and when a reload creates a new runner)
``ProvenanceStore.adoptable`` re-checks all of it against the file on disk:

1. the state directory and the record are ours (owner uid, no group/other write, no symlink);
2. the record's fingerprint equals the current configuration's — a changed scope, identity or
   format means the file holds the wrong token, a changed mode or owner a file that is not
   as configured (the reason names the parts that changed);
3. the token file is a regular file owned by us (or the configured ``file_owner``), not a
   symlink, and its SHA-256 equals the recorded one — a file another UID wrote, or edited, is
   never adopted;
4. the recorded expiry is still ahead.

Anything else returns a reason, and the token is refreshed at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from entra_tokend.model import STATE_DIR, AccessToken, Identity, TokenSpec
from entra_tokend.outputs.writer import write_atomic
from entra_tokend.util.files import FileTooLarge, read_bounded

_RECORD_LIMIT = 4096
MAX_TOKEN_FILE_BYTES = 1024 * 1024
"""A token file larger than this (bytes) is not one this daemon wrote: a docker config of a
few registries is a few KiB. Adoption refuses it unread."""
_STATE_MODE = 0o700
_RECORD_MODE = 0o600


@dataclass(frozen=True)
class ExistingToken:
    """A token an earlier run wrote and that may be adopted: unix issue and expiry times."""

    issued_at: float | None
    expires_on: float
    lifetime: float | None = None
    """The lifetime the refresh was planned on (the shortest credential involved)."""
    content: bytes | None = field(default=None, repr=False, compare=False)
    """The file's bytes as checked (so a deleted or replaced file can be put back)."""


Fingerprint = Mapping[str, str]
"""Part name → SHA-256 (hex) of that part of a token's configuration (``fingerprint``)."""


def fingerprint(spec: TokenSpec, identity: Identity) -> Fingerprint:
    """SHA-256 of each part of the configuration that determines a token file: ``identity``
    (tenant, client, authority host), ``scope``, ``format`` (with its options), ``path``,
    ``file_mode``, ``file_owner``, ``file_group``; together the whole output spec."""
    out = spec.output
    options = replace(out, path=Path(), file_mode=0, file_owner=None, file_group=None)
    parts: dict[str, object] = {
        "identity": [identity.tenant_id, identity.client_id, identity.authority_host],
        "scope": spec.scope,
        "format": repr(options),
        "path": str(out.path),
        "file_mode": out.file_mode,
        "file_owner": out.file_owner,
        "file_group": out.file_group,
    }
    return {k: hashlib.sha256(json.dumps(v).encode()).hexdigest() for k, v in parts.items()}


def _read_small(fd_or_path: Path, *, dir_fd: int) -> tuple[bytes, os.stat_result]:
    """A provenance record's bytes (at most ``_RECORD_LIMIT`` + 1) and stat, never following a
    symlink or blocking."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(fd_or_path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        return os.read(fd, _RECORD_LIMIT + 1), st
    finally:
        os.close(fd)


class _NotOurs(OSError):
    """The token file on disk is another user's: not read at all."""


def _owned_by(owners: Collection[int]) -> Callable[[os.stat_result], None]:
    def check(st: os.stat_result) -> None:
        if st.st_uid not in owners:
            raise _NotOurs("token file owned by another user")

    return check


class ProvenanceStore:
    """The state directory of one output_dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / STATE_DIR

    def prepare(self) -> bool:
        """Create the state directory (0700, ours). Call while holding the output_dir lock.

        Returns False when one that is not ours is there (a neighbour's directory or symlink):
        it is left alone and nothing in it is trusted, so no token is adopted and every start
        refreshes — the caller says so in the log.
        """
        with contextlib.suppress(OSError):
            os.mkdir(self.directory, _STATE_MODE)
        try:
            fd = self._state_fd()
        except OSError:
            return False
        try:
            os.fchmod(fd, _STATE_MODE)
        finally:
            os.close(fd)
        return True

    def _state_fd(self) -> int:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            os.close(fd)
            raise OSError("state directory is not ours alone")
        return fd

    def record(self, name: str, print_: Fingerprint, data: bytes, token: AccessToken) -> None:
        """Record that ``data`` for ``token`` was written for token ``name``. Raises OSError
        or WriteError (the token file itself is already in place)."""
        doc = {
            "v": 2,
            "fingerprint": dict(print_),
            "sha256": hashlib.sha256(data).hexdigest(),
            # When it was written (≈ issued), and the lifetime its refresh is planned on: for
            # a docker config the shortest credential involved, not the file's own expiry.
            "issued_at": time.time(),
            "lifetime": token.expires_in,
            "expires_on": token.expires_on,
        }
        write_atomic(
            self.directory / f"{name}.json",
            json.dumps(doc).encode(),
            _RECORD_MODE,
            root=self.root,
            durable=False,  # advisory: a lost record costs one refresh, two fsyncs saved
        )

    def adoptable(
        self, name: str, print_: Fingerprint, path: Path, owners: set[int], now: float
    ) -> ExistingToken | str:
        """The adoptable token of ``name`` at ``path``, or why it is not (see module doc)."""
        try:
            fd = self._state_fd()
        except OSError:
            return "no provenance record from this daemon"
        try:
            raw, st = _read_small(Path(f"{name}.json"), dir_fd=fd)
        except OSError:
            return "no provenance record from this daemon"
        finally:
            os.close(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or len(raw) > _RECORD_LIMIT:
            return "provenance record not written by this daemon"
        try:
            doc = json.loads(raw)
            recorded, digest = doc["fingerprint"], str(doc["sha256"])
            expires_on, issued_at = float(doc["expires_on"]), float(doc["issued_at"])
            lifetime = float(doc["lifetime"])
        except (ValueError, KeyError, TypeError, OverflowError):
            return "provenance record unreadable"
        changed = _changed(recorded, print_)
        if changed:
            return f"configuration changed: {changed}"
        try:
            # Type, size and owner from fstat before a byte is read: a neighbour's 3 GiB
            # sparse file renamed over the token must cost nothing.
            data, _ = read_bounded(
                path, MAX_TOKEN_FILE_BYTES, follow_symlinks=False, check=_owned_by(owners)
            )
        except _NotOurs:
            return "token file owned by another user"
        except FileTooLarge:
            return f"token file larger than {MAX_TOKEN_FILE_BYTES} bytes"
        except OSError:
            return "token file missing or not a regular file"
        if hashlib.sha256(data).hexdigest() != digest:
            return "token file changed since this daemon wrote it"
        if not all(map(math.isfinite, (expires_on, issued_at, lifetime))) or expires_on <= now:
            return "token expired"
        return ExistingToken(issued_at, expires_on, lifetime, content=data)


def _changed(recorded: object, current: Fingerprint) -> str:
    """The parts of ``current`` that differ from a record's (comma-separated; empty: none)."""
    if not isinstance(recorded, dict):  # a record of an earlier version: one digest
        return "a record of an earlier version"
    return ", ".join(k for k, v in current.items() if recorded.get(k) != v)


__all__ = ["ExistingToken", "Fingerprint", "ProvenanceStore", "fingerprint"]
