"""An in-memory output: the latest token, for the managed-identity endpoint.

``MemoryOutput`` implements ``ports.Output``. Alone it is the cache of an on-demand token
(nothing on disk, nothing to adopt); wrapping a ``FileOutput`` (``inner``) it records what a
file token's runner delivered, so the endpoint serves the same token instead of asking Entra
again — including a token adopted from disk at start-up, when the file's format lets it be read
back (``FileOutput.read_back``). What it keeps is the Entra token with its own expiry
(``AccessToken.bearer``: for a docker config not the refresh tokens' end), and it keeps it
before the file is written: a file that cannot be written (a full disk, a directory planted at
its path) fails the attempt, but the endpoint still serves the token Entra issued.

It is also a listener of its runner's events (``observe``): a ``Failed`` event is kept as
``failure`` until the next delivery, so the endpoint can answer at once with its reason. Waiters
(requests for a token not yet issued or too close to expiry) use ``changed``: it fires after
each delivery and each event. Times come from the injected clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from entra_tokend.model import AccessToken, Clock
from entra_tokend.outputs import FileOutput
from entra_tokend.ports import Adoptable, Failed, RunnerEvent, Written

__all__ = ["MemoryOutput"]


class MemoryOutput:
    """Keeps the latest delivered token. ``latest`` is None until the first delivery (or a
    read-back adoption); ``delivered_at`` the monotonic time of the last delivery (None for
    an adopted token); ``failure`` the last attempt's failure, None after a success."""

    # One per token: slots and a lazily created Event keep it small (bench/FINDINGS.md).
    __slots__ = ("_changed", "_clock", "_inner", "delivered_at", "failure", "latest")

    def __init__(self, inner: FileOutput | None = None, *, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock
        self.latest: AccessToken | None = None
        self.delivered_at: float | None = None
        self.failure: Failed | None = None
        # Created by the first waiter only: an Event (and its waiter deque) is ~0.9 KiB, and
        # most file tokens are never asked for through the endpoint.
        self._changed: asyncio.Event | None = None

    @property
    def location(self) -> Path | None:
        """``inner``'s file, or None (only in memory)."""
        return None if self._inner is None else self._inner.location

    async def deliver(self, token: AccessToken) -> None:
        """Keep ``token.bearer`` as the latest and wake waiters, then deliver ``token`` to
        ``inner`` (its ``WriteError`` propagates: the attempt fails, the token is served)."""
        self.latest = token.bearer
        self.delivered_at = self._clock.monotonic()
        self.failure = None
        self._notify()
        if self._inner is not None:
            await self._inner.deliver(token)

    def check(self) -> str | None:
        """``inner``'s check (None without a file)."""
        return None if self._inner is None else self._inner.check()

    async def restore(self) -> bool:
        """``inner``'s restore (False without a file)."""
        return False if self._inner is None else await self._inner.restore()

    def adoptable(self, now: float) -> Adoptable | str | None:
        """``inner``'s adoptable token, or None (memory does not survive a restart). A token
        whose file can be read back is kept as ``latest`` (the endpoint serves it)."""
        if self._inner is None:
            return None
        found = self._inner.adoptable(now)
        if found is not None and not isinstance(found, str):
            self.latest = self._inner.read_back(found)
        return found

    def observe(self, event: RunnerEvent) -> None:
        """The runner's event listener: keep a failure until the next success (an expiry
        changes neither); wake waiters."""
        if isinstance(event, Failed):
            self.failure = event
        elif isinstance(event, Written):
            self.failure = None
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self, timeout: float) -> bool:
        """Wait until the next delivery or event; False after ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True
