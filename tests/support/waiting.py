"""Waiting: poll a predicate until a deadline (the deadline bounds a failure; it never
synchronises). A miss raises ``WaitTimeout``, an ``AssertionError``: the test fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition polled by ``wait_until`` did not hold before its deadline."""


class _Deadline:
    def __init__(self, timeout: float, what: object) -> None:
        self.timeout = timeout
        self.what = what
        self.end = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() >= self.end:
            raise WaitTimeout(f"timed out after {self.timeout:g} s waiting for {self.what}")


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    *,
    what: str | None = None,
    interval: float = 0.01,
) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something truthy; return that.

    Raises ``WaitTimeout`` (naming ``what``, else the predicate) when the predicate is still
    falsy at ``timeout`` seconds. The predicate is always called at least once.
    """
    deadline = _Deadline(timeout, what or predicate)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval)
    return value


async def wait_until_async(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    *,
    what: str | None = None,
    interval: float = 0.01,
) -> T:
    """``wait_until`` for a coroutine: yields to the event loop between polls."""
    deadline = _Deadline(timeout, what or predicate)
    while not (value := predicate()):
        deadline.check()
        await asyncio.sleep(interval)
    return value
