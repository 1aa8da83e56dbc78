"""Token files: atomic writes, formats, temp-file cleanup.

``write_atomic`` replaces a file so that a reader at any moment sees the old complete file or
the new complete file — never a partial, empty or foreign one, even if the process is
SIGKILLed between any two steps or the disk fills. It performs, in order:

1. Open the target's directory (``O_DIRECTORY``); every later step is relative to that fd, so a
   directory swapped in mid-write cannot redirect us.
2. Create a temp file in that directory with an unpredictable name and
   ``O_CREAT|O_EXCL|O_NOFOLLOW`` (mode 0600): a planted file or symlink makes this fail
   instead of being followed or reused.
3. Write every byte, then ``fsync`` the file: its data is durable before it gets a name.
4. ``fchown`` (if an owner/group is configured) and ``fchmod`` to the configured mode.
5. ``rename`` the temp file over the target: atomic; a symlink planted at the target is
   replaced, never followed; a directory planted there makes the write fail, untouched.
6. ``fsync`` the directory, so the rename survives a crash.

If any step fails the temp file is unlinked and the target is untouched. Temp files a killed
process left behind carry our marker and are removed by ``remove_stale_temp_files`` at start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from entra_tokend.exchange import AccessToken

TEMP_MARKER = ".entra-tokend-"
_TEMP_RE = re.compile(r"^\..+\.entra-tokend-[0-9a-f]{16}\.tmp$")


class SinkError(Exception):
    """A token file could not be written; the previous file is untouched."""

    reason = "write_error"


def temp_name(target: str) -> str:
    """The temp-file name used for ``target``: hidden, marked as ours, unpredictable."""
    return f".{target}{TEMP_MARKER}{secrets.token_hex(8)}.tmp"


def is_temp_name(name: str) -> bool:
    """True for names ``temp_name`` produces (and only those)."""
    return bool(_TEMP_RE.match(name))


def write_atomic(
    path: Path, data: bytes, mode: int, uid: int | None = None, gid: int | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically (see the module doc). Raises SinkError."""
    if not data:
        raise SinkError(f"refusing to write an empty file to {path}")
    directory = path.parent
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SinkError(f"cannot open directory {directory}: {exc.strerror}") from None
    tmp = temp_name(path.name)
    created = False
    try:
        try:
            st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise SinkError(f"{path} is a directory; not replacing it with a token file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        created = True
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            if uid is not None or gid is not None:
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        created = False
        os.fsync(dir_fd)
    except OSError as exc:
        what = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
        raise SinkError(f"cannot write {path}: {what}") from None
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        os.close(dir_fd)


def remove_stale_temp_files(directory: Path) -> list[str]:
    """Remove temp files a killed run left in ``directory``: ours by name, regular, our uid."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        if not is_temp_name(name):
            continue
        full = directory / name
        try:
            st = full.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                full.unlink()
                removed.append(name)
        except OSError:
            continue
    return removed


def render(token: AccessToken, fmt: str, tenant_id: str, client_id: str) -> bytes:
    """The file's bytes: the bare token (``raw``) or a JSON document (``json``)."""
    if fmt == "json":
        doc = {
            "access_token": token.token,
            "token_type": token.token_type,
            "expires_on": int(token.expires_on),
            "scope": token.scope,
            "tenant_id": tenant_id,
            "client_id": client_id,
        }
        return json.dumps(doc, separators=(",", ":")).encode()
    # No trailing newline: `Authorization: Bearer $(cat f)` and credentials_file use it as is.
    return token.token.encode()


@dataclass(frozen=True)
class ExistingToken:
    """A token found on disk at start-up: when it was issued and when it expires."""

    issued_at: float | None
    expires_on: float


def read_existing(path: Path, fmt: str) -> ExistingToken | None:
    """Best effort: the expiry of a token file a previous run wrote, or None."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 64 * 1024:
            return None
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    token = text
    expires_on: float | None = None
    if fmt == "json":
        try:
            doc = json.loads(text)
            token = str(doc["access_token"])
            expires_on = float(doc["expires_on"])
        except (ValueError, KeyError, TypeError):
            return None
    issued_at: float | None = None
    parts = token.split(".")
    if len(parts) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            if isinstance(claims, dict):
                exp, iat = claims.get("exp"), claims.get("iat")
                if expires_on is None and isinstance(exp, int | float):
                    expires_on = float(exp)
                if isinstance(iat, int | float):
                    issued_at = float(iat)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            pass
    if expires_on is None:
        return None
    return ExistingToken(issued_at=issued_at, expires_on=expires_on)
