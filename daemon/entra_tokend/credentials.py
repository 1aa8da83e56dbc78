"""Credential sources: one per identity, holding its projected token (the client assertion).

A ``CredentialSource`` reads the projected token when asked (``current``), notices a rotation by
content fingerprint, and tells its subscribers — the runners of that identity's tokens — so
that a token whose last attempt failed retries at once with the new assertion. The
``DirectoryWatcher`` (inotify on the token's directory plus a slow poll) triggers ``check`` on
the event loop, which always reads the file. While the watcher runs, ``current`` hands out the
assertion it already holds as long as the file's ``stat`` signature (device, inode, size, mtime,
ctime, following symlinks) is the one taken just before that assertion was read: one ``stat``
instead of open, read and JWT decode for every refresh of every token of the identity (a sixth
of the cost here: bench/FINDINGS.md). Problems (missing, garbage, expired) are logged once per
change of state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from entra_tokend.assertion import (
    Assertion,
    AssertionUnavailable,
    check_unexpired,
    read_assertion,
)
from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.metrics import Metrics
from entra_tokend.model import Clock, Identity, iso
from entra_tokend.ports import AssertionProvider, Subscriber
from entra_tokend.watcher import DirectoryWatcher

__all__ = ["AssertionProvider", "CredentialSource", "Subscriber"]

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of the file a path resolves to.
_StatSignature = tuple[int, int, int, int, int]


def _stat_signature(path: Path) -> _StatSignature | None:
    """The file ``path`` resolves to, as ``stat`` sees it; None when there is none. Without
    the watcher's resolved path (``realpath`` costs more than reading the token): a new kubelet
    generation is a new file, and a reused inode would need the old file's size, mtime and
    ctime to the nanosecond. The ctime cannot be set back, so even a rewrite in place that
    restores the mtime changes it (unless within one timestamp tick: the watcher's events)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class CredentialSource:
    """One identity's projected token, its rotations and its subscribers."""

    def __init__(self, identity: Identity, clock: Clock, metrics: Metrics) -> None:
        self.identity = identity
        self._clock = clock
        self._metrics = metrics
        self._log = get_logger(identity=identity.name)
        self.assertion: Assertion | None = None
        # The file's signature just before ``assertion`` was read; None: read it next time.
        self._read_signature: _StatSignature | None = None
        self._problem: str | None = None  # last logged problem, to log once per change
        self._subscribers: list[Subscriber] = []
        self._watcher: DirectoryWatcher | None = None

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback`` on every rotation (until ``unsubscribe``)."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback`` (an equal one: a bound method made again will do); a
        callback not subscribed is ignored. No closure is kept per subscriber: one per token
        was ~0.2 KiB (bench/FINDINGS.md, memory per token)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def current(self) -> Assertion:
        """The projected token now; notices a rotation. Raises ``AssertionUnavailable``
        (missing, unreadable, malformed, expired) after logging it once per change.

        Reads the file unless the watcher runs on inotify and the file's signature is unchanged
        since the last successful read (then the assertion held is returned; its expiry is still
        checked against the clock every time). While the watcher only polls (inotify off or
        unavailable: nothing would report an in-place rewrite), every call reads the file."""
        watcher = self._watcher
        return self._load(reuse=watcher is not None and watcher.using_inotify)

    def _load(self, *, reuse: bool) -> Assertion:
        path = self.identity.token_file
        try:
            signature = _stat_signature(path)
            if reuse and signature is not None and signature == self._read_signature:
                assert self.assertion is not None  # set together with _read_signature
                assertion = self.assertion
            else:
                # Forget the old signature first: a failed read must not leave it trusted.
                self._read_signature = None
                assertion = read_assertion(path)
                # Taken before the read: if the file changed in between, the next signature
                # differs and the file is read again (never the other way round).
                self._read_signature = signature
            if self.assertion is None or assertion.fingerprint != self.assertion.fingerprint:
                self._rotated(assertion)
            check_unexpired(assertion, self._clock.wall(), path)
        except AssertionUnavailable as exc:
            self._report(str(exc), exc.kind)
            raise
        if self._problem is not None:
            self._problem = None
            self._log.info("projected token usable again")
            # Same content as before it went missing is no rotation, but the tokens that
            # failed for want of it can retry now.
            for callback in list(self._subscribers):
                callback()
        return assertion

    def check(self) -> None:
        """Watcher callback: read the file (always: the watcher also calls for an in-place
        rewrite that kept the signature); rotations reach the subscribers."""
        with contextlib.suppress(AssertionUnavailable):
            self._load(reuse=False)

    def _report(self, message: str, kind: str) -> None:
        if self._problem != message:
            self._problem = message
            self._log.warning("projected token unavailable", problem=kind, detail=message)

    def _rotated(self, assertion: Assertion) -> None:
        remember_secret(assertion.token)
        first = self.assertion is None
        self.assertion = assertion
        name = self.identity.name
        self._metrics.assertion_loaded(name, assertion.expires_on)
        if not first:
            self._metrics.assertion_rotated(name)
        self._log.info(
            "projected token loaded" if first else "projected token rotated",
            expires_at=iso(assertion.expires_on),
            iss=assertion.iss,
            sub=assertion.sub,
            aud=list(assertion.aud),
        )
        for callback in list(self._subscribers):
            callback()

    def watch(self, poll_interval: float) -> None:
        """Start watching the token file's directory (idempotent); reads it once now."""
        if self._watcher is None:
            watcher = DirectoryWatcher(
                self.identity.token_file,
                self.check,
                loop=asyncio.get_running_loop(),
                poll_interval=poll_interval,
            )
            watcher.start()
            self._watcher = watcher
        self.check()

    def close(self) -> None:
        """Stop watching."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
