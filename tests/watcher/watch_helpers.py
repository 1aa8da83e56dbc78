"""What the watcher tests share: a recording callback, a watcher in a context, kubelet-less
file replacement, and the fixture that leaves only inotify to notice a directory appearing."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from entra_tokend import watcher as watcher_module
from entra_tokend.watcher import DirectoryWatcher

DEADLINE = 10.0
HOUR = 3600.0


class Recorder:
    """The watcher's callback: records what the token file held at each call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[str | None] = []
        self._called = asyncio.Event()

    def __call__(self) -> None:
        try:
            content: str | None = self.path.read_text()
        except OSError:
            content = None
        self.seen.append(content)
        self._called.set()

    async def wait_for(self, expected: str | None) -> None:
        """Wait until the latest callback saw ``expected``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while not self.seen or self.seen[-1] != expected:
            remaining = end - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no callback saw {expected!r}; callbacks saw {self.seen!r}")
            self._called.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._called.wait(), remaining)


@contextlib.asynccontextmanager
async def watching(
    path: Path, *, poll_interval: float = HOUR, **kwargs: Any
) -> AsyncIterator[tuple[DirectoryWatcher, Recorder]]:
    recorder = Recorder(path)
    watcher = DirectoryWatcher(
        path, recorder, loop=asyncio.get_running_loop(), poll_interval=poll_interval, **kwargs
    )
    watcher.start()
    try:
        yield watcher, recorder
    finally:
        watcher.stop()


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def replace_file(path: Path, content: str) -> None:
    """Write-temp-then-rename, as most config management tools do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


@pytest.fixture(name="no_fast_poll")
def no_fast_poll_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disable the fast poll so only inotify can notice a directory appearing."""
    monkeypatch.setattr(watcher_module, "FAST_POLL_INTERVAL", HOUR)
