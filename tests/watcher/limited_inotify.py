"""DirectoryWatcher with inotify limits lowered: run inside a new user namespace.

``unshare --user --map-root-user python limited_inotify.py instances|watches`` — inotify's
per-user limits (``/proc/sys/user/max_inotify_instances``, ``max_inotify_watches``) belong to
the user namespace, so the namespace's root can lower them for itself without touching the
machine's. Exits 0 when the scenario held, 1 with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from entra_tokend.emulator.kubelet import ProjectedVolume
from entra_tokend.watcher import DirectoryWatcher

DEADLINE = 10.0
HOUR = 3600.0


class Failed(Exception):
    """The scenario did not hold."""


def set_limit(name: str, value: int) -> None:
    Path(f"/proc/sys/user/max_inotify_{name}").write_text(f"{value}\n")


class Recorder:
    """The watcher's callback: what the token file held at each call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[str | None] = []
        self.called = asyncio.Event()

    def __call__(self) -> None:
        try:
            self.seen.append(self.path.read_text())
        except OSError:
            self.seen.append(None)
        self.called.set()

    async def wait_for(self, expected: str) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while not self.seen or self.seen[-1] != expected:
            if loop.time() > end:
                raise Failed(f"no callback saw {expected!r}; callbacks saw {self.seen!r}")
            self.called.clear()
            try:
                await asyncio.wait_for(self.called.wait(), max(0.0, end - loop.time()))
            except TimeoutError:
                continue


async def wait_for_log(
    logs: list[MutableMapping[str, Any]], event: str
) -> MutableMapping[str, Any]:
    """The first captured log event named ``event``, polled with a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while loop.time() < end:
        for entry in logs:
            if entry["event"] == event:
                return entry
        await asyncio.sleep(0.01)
    raise Failed(f"no {event!r} log line; logged: {logs!r}")


def start_limited(tmp: Path, limit: str) -> tuple[ProjectedVolume, Recorder, DirectoryWatcher]:
    """With inotify's ``limit`` at 0, a projected token and a started watcher polling hourly:
    only the fast poll (or inotify, once possible) can see a rotation in time."""
    set_limit(limit, 0)
    volume = ProjectedVolume(tmp / "tokens")
    volume.write("token-0")
    recorder = Recorder(volume.path)
    watcher = DirectoryWatcher(
        volume.path, recorder, loop=asyncio.get_running_loop(), poll_interval=HOUR
    )
    watcher.start()
    return volume, recorder, watcher


async def no_instances(tmp: Path, logs: list[MutableMapping[str, Any]]) -> None:
    """No inotify instance left: the fast poll sees rotations."""
    volume, recorder, watcher = start_limited(tmp, "instances")
    try:
        if watcher.using_inotify:
            raise Failed("an inotify instance was opened beyond max_inotify_instances = 0")
        warning = await wait_for_log(
            logs, "inotify unavailable; falling back to polling the token file"
        )
        if f"[Errno {errno.EMFILE}]" not in warning["error"]:
            raise Failed(f"not the instance limit: {warning!r}")
        volume.write("token-1")
        await recorder.wait_for("token-1")
    finally:
        watcher.stop()


async def no_watches(tmp: Path, logs: list[MutableMapping[str, Any]]) -> None:
    """No inotify watch left: fast poll; once one is available again, inotify takes over."""
    volume, recorder, watcher = start_limited(tmp, "watches")
    try:
        if not watcher.using_inotify:
            raise Failed("no inotify instance, although only watches are limited")
        await wait_for_log(logs, "cannot watch token directory; polling it instead")
        volume.write("token-1")
        await recorder.wait_for("token-1")
        set_limit("watches", 100)
        # The next fast poll takes the watch; from then on the poll runs hourly.
        await wait_for_log(logs, "watching token directory for rotations")
        polls = watcher.poll_count
        volume.write("token-2")
        await recorder.wait_for("token-2")
        if watcher.poll_count != polls:
            raise Failed("the rotation after the watch took hold was seen by a poll")
    finally:
        watcher.stop()


SCENARIOS = {"instances": no_instances, "watches": no_watches}


def main(argv: list[str]) -> int:
    (name,) = argv
    with tempfile.TemporaryDirectory() as tmp, capture_logs() as logs:
        try:
            asyncio.run(SCENARIOS[name](Path(tmp), logs))
        except Failed as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
