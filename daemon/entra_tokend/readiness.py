"""Readiness: every configured token on disk and unexpired.

Runners report a possible change (``changed``); ``Readiness`` keeps a count of valid tokens so
that no event costs a pass over every token, sets ``entra_tokend_ready``, logs each transition
once, and tells systemd (``READY=1`` the first time, ``STATUS=`` after). ``snapshot`` answers
``/readyz``.
"""

from __future__ import annotations

from typing import Protocol

from entra_tokend import sdnotify
from entra_tokend.logging import get_logger
from entra_tokend.metrics import Metrics


class Tracked(Protocol):
    """A token whose readiness is tracked (a runner)."""

    @property
    def state_name(self) -> str:
        """``pending``, ``ok``, ``failing``, ``expired`` or ``missing``."""
        ...

    def valid(self) -> bool:
        """True while the token on disk is unexpired and in place."""
        ...


class Readiness:
    """Ready when every tracked token is valid (and at least one is tracked, unless
    ``allow_empty``: a daemon that only serves the managed-identity endpoint has no files)."""

    def __init__(self, metrics: Metrics, *, allow_empty: bool = False) -> None:
        self._metrics = metrics
        self._allow_empty = allow_empty
        self._log = get_logger()
        self._tracked: dict[str, Tracked] = {}
        self._valid: dict[str, bool] = {}
        self._valid_count = 0
        self._ready = False
        self._ready_notified = False
        # Nothing is announced before the daemon runs (lock taken, signals handled): a file
        # adopted at construction must not send READY=1 to systemd that early.
        self._announcing = False
        metrics.set_ready(False)

    def start(self) -> None:
        """Begin announcing readiness (the daemon is running); announces the current state."""
        self._announcing = True
        self.update()

    @property
    def ready(self) -> bool:
        """The current readiness."""
        return self._ready

    def track(self, name: str, token: Tracked) -> None:
        """Start tracking ``name`` (replacing an earlier token of that name)."""
        self.untrack(name)
        self._tracked[name] = token
        self._valid[name] = False
        self.changed(name)

    def untrack(self, name: str) -> None:
        """Stop tracking ``name`` (removed or replaced by a reload)."""
        if self._tracked.pop(name, None) is not None:
            self._valid_count -= self._valid.pop(name)

    def changed(self, name: str) -> None:
        """``name``'s validity may have changed; update the count and announce a transition."""
        token = self._tracked.get(name)
        if token is None:
            return
        valid = token.valid()
        if valid != self._valid[name]:
            self._valid[name] = valid
            self._valid_count += 1 if valid else -1
        self.update()

    def update(self) -> bool:
        """Recompute readiness from the counts; log and notify on a transition."""
        ready = (self._allow_empty or bool(self._tracked)) and self._valid_count == len(
            self._tracked
        )
        if not self._announcing:
            return False
        self._metrics.set_ready(ready)
        if ready == self._ready:
            return ready
        self._ready = ready
        _, states = self.snapshot()
        if ready:
            status = f"STATUS=all {len(states)} tokens on disk"
            self._log.info("ready: every token is on disk", tokens=len(states))
            # READY=1 once: systemd reads it as "start-up finished", not as a health signal.
            if self._ready_notified:
                sdnotify.notify(status)
            else:
                sdnotify.notify("READY=1", status)
                self._ready_notified = True
        else:
            missing = {name: state for name, state in states.items() if state != "ok"}
            self._log.warning("not ready: a token is missing or expired", tokens=missing)
            sdnotify.notify(f"STATUS=not ready: {', '.join(sorted(missing))}")
        return ready

    def snapshot(self) -> tuple[bool, dict[str, str]]:
        """(ready, {token: state}) computed now, for ``/readyz``."""
        states = {name: token.state_name for name, token in self._tracked.items()}
        ready = (self._allow_empty or bool(states)) and all(
            t.valid() for t in self._tracked.values()
        )
        return ready, states
