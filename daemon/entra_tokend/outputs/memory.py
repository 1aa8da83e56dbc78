"""An in-memory output: the latest token, for the managed-identity endpoint.

``MemoryOutput`` implements the ``Output`` protocol. Alone it is the cache of an on-demand token
(nothing on disk); wrapping a ``FileOutput`` (``inner``) it records what a file token's runner
delivered, so the endpoint serves the same token instead of asking Entra again. Waiters (requests
for a token not yet issued or too close to expiry) use ``changed``: it fires after each delivery
and after each finished attempt (``attempt_finished``, which the runner's ``on_attempt`` calls),
so a failed refresh wakes them too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from entra_tokend.model import AccessToken
from entra_tokend.outputs import Output
from entra_tokend.outputs.provenance import ExistingToken
from entra_tokend.outputs.writer import WriteError

__all__ = ["MemoryOutput", "WriteError"]


class MemoryOutput:
    """Keeps the latest delivered token. ``latest`` is None until the first delivery;
    ``attempts`` counts finished refresh attempts (success or failure)."""

    # One per token: slots and a lazily created Event keep it small (bench/FINDINGS.md).
    __slots__ = (
        "_changed",
        "_inner",
        "_monotonic",
        "attempts",
        "delivered_at",
        "latest",
        "refresh_requested",
    )

    def __init__(
        self, inner: Output | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._monotonic = monotonic
        self.latest: AccessToken | None = None
        self.attempts = 0
        self.delivered_at: float | None = None  # monotonic time of the last delivery
        self.refresh_requested = False  # a forced refresh is pending (one per attempt)
        # Created by the first waiter only: an Event (and its waiter deque) is ~0.9 KiB, and
        # most file tokens are never asked for through the endpoint.
        self._changed: asyncio.Event | None = None

    async def deliver(self, token: AccessToken) -> None:
        """Deliver to ``inner`` first (a WriteError propagates, nothing recorded), then keep
        ``token`` as the latest and wake waiters."""
        if self._inner is not None:
            await self._inner.deliver(token)
        self.latest = token
        self.delivered_at = self._monotonic()
        self._notify()

    def adoptable(self, now: float) -> ExistingToken | str | None:
        """``inner``'s adoptable file, or None (memory does not survive a restart)."""
        return self._inner.adoptable(now) if self._inner is not None else None

    def attempt_finished(self) -> None:
        """A refresh attempt ended (successful or not): wake waiters to look again."""
        self.attempts += 1
        self.refresh_requested = False
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self, timeout: float) -> bool:
        """Wait until the next delivery or finished attempt; False after ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True
