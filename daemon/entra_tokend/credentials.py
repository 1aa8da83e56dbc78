"""Credential sources: one per identity, holding its projected token (the client assertion).

A ``CredentialSource`` reads the projected token fresh when asked (``current``), notices a
rotation by content fingerprint, and tells its subscribers — the runners of that identity's
tokens — so that a token whose last attempt failed retries at once with the new assertion. The
``DirectoryWatcher`` (inotify on the token's directory plus a slow poll) triggers ``check`` on
the event loop. Problems (missing, garbage, expired) are logged once per change of state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from entra_tokend.assertion import (
    Assertion,
    AssertionUnavailable,
    check_unexpired,
    read_assertion,
)
from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.metrics import Metrics
from entra_tokend.model import Clock, Identity

if TYPE_CHECKING:
    from entra_tokend.watcher import DirectoryWatcher

Subscriber = Callable[[], None]
"""Called on the event loop when the identity's assertion changed."""


def iso(ts: float | None) -> str | None:
    """A unix time as ISO 8601 UTC (for log fields); None stays None."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # outside what datetime represents
        return str(ts)


class AssertionProvider(Protocol):
    """What a runner needs from its identity's credential source."""

    identity: Identity

    def current(self) -> Assertion:
        """The usable assertion now. Raises ``AssertionUnavailable``."""
        ...


class CredentialSource:
    """One identity's projected token, its rotations and its subscribers."""

    def __init__(self, identity: Identity, clock: Clock, metrics: Metrics) -> None:
        self.identity = identity
        self._clock = clock
        self._metrics = metrics
        self._log = get_logger(identity=identity.name)
        self.assertion: Assertion | None = None
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
        """Read the projected token now; notice a rotation. Raises ``AssertionUnavailable``
        (missing, unreadable, malformed, expired) after logging it once per change."""
        path = self.identity.token_file
        try:
            assertion = read_assertion(path)
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
        """Watcher callback: re-read the file; rotations reach the subscribers."""
        with contextlib.suppress(AssertionUnavailable):
            self.current()

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
            from entra_tokend.watcher import DirectoryWatcher  # noqa: PLC0415 - after config

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
