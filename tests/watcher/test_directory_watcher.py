"""DirectoryWatcher against real inotify, real files and kubelet's real write sequence.

Every scenario runs in its own asyncio loop. The watcher's callback reads the token file, so a
test waits for "a callback that saw X" with a deadline; the deadline only bounds a failure, it
is never a speed target. Unless a test is about polling, the fallback poll is set to an hour so
that only inotify can deliver what the test waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from entra_tokend import watcher as watcher_module
from entra_tokend.emulator.kubelet import ProjectedVolume
from entra_tokend.watcher import DirectoryWatcher
from testlib import base_env, wait_until_async

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


@pytest.fixture
def no_fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disable the fast poll so only inotify can notice a directory appearing."""
    monkeypatch.setattr(watcher_module, "FAST_POLL_INTERVAL", HOUR)


def test_each_kubelet_rotation_calls_back_exactly_once(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write("token-0")

    async def scenario() -> None:
        async with watching(volume.path) as (watcher, recorder):
            assert watcher.using_inotify
            for i in range(1, 31):
                volume.write(f"token-{i}")
                await recorder.wait_for(f"token-{i}")
                # mkdir, symlink, rename, rmtree: several events, one callback per rotation.
                assert len(recorder.seen) == i

    run(scenario())


def test_back_to_back_rotations_end_on_the_last_token(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write("token-0")
    rotations = 25

    async def scenario() -> None:
        async with watching(volume.path) as (_, recorder):
            for i in range(1, rotations + 1):
                volume.write(f"token-{i}")
            await recorder.wait_for(f"token-{rotations}")
            assert 1 <= len(recorder.seen) <= rotations

    run(scenario())


def test_rotation_seen_through_a_symlinked_directory(tmp_path: Path) -> None:
    # /var/run is often a symlink to /run; the watch must land on the real directory.
    real = tmp_path / "real"
    volume = ProjectedVolume(real)
    volume.write("token-0")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    path = tmp_path / "link" / volume.filename

    async def scenario() -> None:
        async with watching(path) as (_, recorder):
            volume.write("token-1")
            await recorder.wait_for("token-1")

    run(scenario())


def test_plain_in_place_write_and_rename(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a")

    async def scenario() -> None:
        async with watching(path) as (_, recorder):
            path.write_text("b")
            await recorder.wait_for("b")
            replace_file(path, "c")
            await recorder.wait_for("c")
            replace_file(path, "d")
            await recorder.wait_for("d")
            assert recorder.seen.index("b") < recorder.seen.index("c")
            # The callback's own reads of the file must not call back again (no feedback
            # loop): at most one callback per event of each write.
            assert len(recorder.seen) <= 3 + 1 + 1

    run(scenario())


def test_unrelated_files_in_the_directory_do_not_call_back(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write("token-0")

    async def scenario() -> None:
        async with watching(volume.path) as (_, recorder):
            for i in range(5):
                replace_file(tmp_path / "tokens" / "other", f"other-{i}")
            # Events are delivered in order, so once the rotation is seen the unrelated
            # writes before it have been judged too.
            volume.write("token-1")
            await recorder.wait_for("token-1")
            assert recorder.seen == ["token-1"]

    run(scenario())


def test_kubelet_swap_is_checked_without_waiting_for_the_debounce(tmp_path: Path) -> None:
    # Debounce and poll an hour: only the check the ..data rename brings forward can see it.
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write("token-0")

    async def scenario() -> None:
        async with watching(volume.path, debounce=HOUR) as (_, recorder):
            volume.write("token-1")
            await recorder.wait_for("token-1")
            assert recorder.seen == ["token-1"]

    run(scenario())


def test_a_burst_of_writes_is_debounced(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("start")
    writes = 20

    async def scenario() -> None:
        async with watching(path, debounce=0.2) as (_, recorder):
            for i in range(writes):
                path.write_text(f"v{i}")
            await recorder.wait_for(f"v{writes - 1}")
            # A later, separate change: once it is seen, every event of the burst has been.
            replace_file(path, "end")
            await recorder.wait_for("end")
            burst_callbacks = len(recorder.seen) - 1
            assert 1 <= burst_callbacks < writes

    run(scenario())


def test_directory_contents_replaced_wholesale(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    volume = ProjectedVolume(directory)
    volume.write("token-0")

    async def scenario() -> None:
        async with watching(volume.path) as (_, recorder):
            for entry in list(directory.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            await recorder.wait_for(None)
            ProjectedVolume(directory).write("token-1")
            await recorder.wait_for("token-1")
            volume.write("token-2")
            await recorder.wait_for("token-2")

    run(scenario())


@pytest.mark.usefixtures("no_fast_poll")
def test_directory_missing_at_start_then_created(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "a" / "b" / "tokens")

    async def scenario() -> None:
        async with watching(volume.path) as (watcher, recorder):
            assert watcher.using_inotify
            # The watch follows the path down as each level appears.
            (tmp_path / "a").mkdir()
            (tmp_path / "a" / "b").mkdir()
            volume.write("token-1")
            await recorder.wait_for("token-1")
            volume.write("token-2")
            await recorder.wait_for("token-2")
            assert recorder.seen == ["token-1", "token-2"]

    run(scenario())


@pytest.mark.usefixtures("no_fast_poll")
def test_directory_removed_and_recreated(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    volume = ProjectedVolume(directory)
    volume.write("token-0")

    async def scenario() -> None:
        async with watching(volume.path) as (_, recorder):
            shutil.rmtree(directory)
            await recorder.wait_for(None)
            volume.write("token-1")
            await recorder.wait_for("token-1")
            # The new directory is watched, not just noticed once.
            volume.write("token-2")
            await recorder.wait_for("token-2")

    run(scenario())


def test_directory_swapped_by_rename_is_caught_by_the_poll(tmp_path: Path) -> None:
    # inotify's watch follows the old directory to its new name; only the poll's check of the
    # directory's identity can notice that another directory now has the watched name.
    directory = tmp_path / "tokens"
    (directory).mkdir()
    (directory / "token").write_text("token-0")
    (tmp_path / "tokens.new").mkdir()
    (tmp_path / "tokens.new" / "token").write_text("token-1")

    async def scenario() -> None:
        async with watching(directory / "token", poll_interval=0.05) as (watcher, recorder):
            directory.rename(tmp_path / "tokens.old")
            (tmp_path / "tokens.new").rename(directory)
            await recorder.wait_for("token-1")
            # The old directory is no longer watched: writing there calls nothing back.
            (tmp_path / "tokens.old" / "token").write_text("stale")
            polls = watcher.poll_count
            await wait_until_async(
                lambda: watcher.poll_count >= polls + 3, DEADLINE, what="three polls"
            )
            replace_file(directory / "token", "token-2")
            await recorder.wait_for("token-2")
            assert recorder.seen == ["token-1", "token-2"]

    run(scenario())


@pytest.mark.usefixtures("no_fast_poll")
def test_directory_swapped_then_old_one_removed(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    ProjectedVolume(directory).write("token-0")
    ProjectedVolume(tmp_path / "tokens.new").write("token-1")

    async def scenario() -> None:
        async with watching(directory / "azure-identity-token") as (_, recorder):
            directory.rename(tmp_path / "tokens.old")
            (tmp_path / "tokens.new").rename(directory)
            shutil.rmtree(tmp_path / "tokens.old")
            await recorder.wait_for("token-1")
            ProjectedVolume(directory).write("token-2")
            await recorder.wait_for("token-2")

    run(scenario())


def test_reading_the_token_and_idle_polls_do_not_call_back(tmp_path: Path) -> None:
    # The daemon reads the token in its callback; in a plain layout that read happens in the
    # watched directory and must not be taken for a change (that would be a feedback loop).
    path = tmp_path / "token"
    path.write_text("a")

    async def scenario() -> None:
        async with watching(path, poll_interval=0.02) as (watcher, recorder):
            replace_file(path, "b")
            await recorder.wait_for("b")
            for _ in range(5):
                path.read_text()
            polls = watcher.poll_count
            await wait_until_async(
                lambda: watcher.poll_count >= polls + 10, DEADLINE, what="ten idle polls"
            )
            assert recorder.seen == ["b"]

    run(scenario())


def test_polling_only_mode_calls_back_on_change_and_never_when_idle(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write("token-0")

    async def scenario() -> None:
        async with watching(volume.path, poll_interval=0.02, use_inotify=False) as (
            watcher,
            recorder,
        ):
            assert not watcher.using_inotify
            await wait_until_async(
                lambda: watcher.poll_count >= 5, DEADLINE, what="five idle polls"
            )
            assert recorder.seen == []
            volume.write("token-1")
            await recorder.wait_for("token-1")
            polls = watcher.poll_count
            await wait_until_async(
                lambda: watcher.poll_count >= polls + 5, DEADLINE, what="five more idle polls"
            )
            assert recorder.seen == ["token-1"]
            volume.path.unlink()
            await recorder.wait_for(None)

    run(scenario())


def test_polling_only_mode_picks_up_a_missing_file_quickly(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")

    async def scenario() -> None:
        # An hour-long poll interval: only the fast poll for a missing file can deliver this.
        async with watching(volume.path, use_inotify=False) as (_, recorder):
            volume.write("token-1")
            await recorder.wait_for("token-1")

    run(scenario())


def test_a_failing_callback_does_not_stop_the_watcher(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write("token-0")

    async def scenario() -> None:
        recorder = Recorder(volume.path)
        calls = 0

        def callback() -> None:
            nonlocal calls
            calls += 1
            recorder()
            if calls == 1:
                raise RuntimeError("daemon bug")

        watcher = DirectoryWatcher(volume.path, callback, loop=asyncio.get_running_loop())
        watcher.start()
        try:
            volume.write("token-1")
            await recorder.wait_for("token-1")
            volume.write("token-2")
            await recorder.wait_for("token-2")
        finally:
            watcher.stop()

    run(scenario())


def inotify_descriptors() -> int:
    """How many inotify instances this process holds open (from /proc, not the watcher)."""
    return sum(
        os.readlink(fd) == "anon_inode:inotify"
        for fd in Path("/proc/self/fd").iterdir()
        if fd.is_symlink() and os.path.lexists(fd)
    )


def test_watching_runs_no_thread_and_stop_closes_the_descriptor(tmp_path: Path) -> None:
    # inotify is read on the event loop itself: no thread hand-off between the kernel's event
    # and the check (each hand-off between threads is a chance to be scheduled late).
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write("token-0")
    threads = set(threading.enumerate())
    descriptors = inotify_descriptors()

    async def scenario() -> None:
        async with watching(volume.path) as (watcher, recorder):
            assert watcher.using_inotify
            assert inotify_descriptors() == descriptors + 1
            volume.write("token-1")
            await recorder.wait_for("token-1")
            assert set(threading.enumerate()) == threads
            watcher.stop()
            assert inotify_descriptors() == descriptors
            assert not watcher.using_inotify
        # The context manager's stop() is a second call.
        assert inotify_descriptors() == descriptors

    run(scenario())


def test_start_does_not_raise_for_a_path_under_a_file(tmp_path: Path) -> None:
    # A misconfigured path whose "directory" is a regular file: wait, do not crash.
    (tmp_path / "not-a-dir").write_text("x")
    path = tmp_path / "not-a-dir" / "token"

    async def scenario() -> None:
        async with watching(path) as (watcher, recorder):
            assert watcher.using_inotify
            (tmp_path / "not-a-dir").unlink()
            ProjectedVolume(tmp_path / "not-a-dir", filename="token").write("token-1")
            await recorder.wait_for("token-1")

    run(scenario())


def test_a_file_moved_in_from_elsewhere_is_checked_without_waiting_for_the_debounce(
    tmp_path: Path,
) -> None:
    # `mv` from another directory is a rename into the watched one (IN_MOVED_TO without its
    # IN_MOVED_FROM): the publish step, like kubelet's ..data swap. Debounce and poll an hour.
    directory = tmp_path / "tokens"
    directory.mkdir()
    (directory / "token").write_text("token-0")
    staging = tmp_path / "staging"
    staging.mkdir()

    async def scenario() -> None:
        async with watching(directory / "token", debounce=HOUR) as (_, recorder):
            (staging / "token").write_text("token-1")
            os.replace(staging / "token", directory / "token")
            await recorder.wait_for("token-1")
            assert recorder.seen == ["token-1"]

    run(scenario())


@pytest.mark.usefixtures("no_fast_poll")
def test_directory_moved_away_and_replaced_is_seen_without_the_poll(tmp_path: Path) -> None:
    # The watch follows the old directory to its new name; its IN_MOVE_SELF tells the watcher
    # to find the directory by name again. Poll an hour: only inotify can deliver this.
    directory = tmp_path / "tokens"
    ProjectedVolume(directory).write("token-0")
    ProjectedVolume(tmp_path / "tokens.new").write("token-1")

    async def scenario() -> None:
        async with watching(directory / "azure-identity-token") as (_, recorder):
            directory.rename(tmp_path / "tokens.old")
            (tmp_path / "tokens.new").rename(directory)
            await recorder.wait_for("token-1")
            # The new directory is watched, the old one is not.
            ProjectedVolume(tmp_path / "tokens.old").write("stale")
            ProjectedVolume(directory).write("token-2")
            await recorder.wait_for("token-2")
            assert "stale" not in recorder.seen

    run(scenario())


def test_a_change_lost_in_an_event_queue_overflow_is_still_seen(tmp_path: Path) -> None:
    # The kernel drops events once max_queued_events are waiting (IN_Q_OVERFLOW); the token's
    # own write may be among them. The overflow itself makes the watcher check at once.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: overflowing it would take too long")
    directory = tmp_path / "tokens"
    directory.mkdir()
    path = directory / "token"
    path.write_text("token-0")

    async def scenario() -> None:
        # Debounce and poll an hour: neither can deliver the change.
        async with watching(path, debounce=HOUR) as (_, recorder):
            # The loop does not run while this fills the queue: nothing is read meanwhile.
            for i in range(limit + 1):
                (directory / f"f{i}").touch()
            path.write_text("token-1")  # in place: its events come after the overflow
            await recorder.wait_for("token-1")

    run(scenario())


def _user_namespaces() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _user_namespaces(), reason="needs unshare --user (user namespaces)")
@pytest.mark.parametrize("limit", ["instances", "watches"])
def test_inotify_limits_reached_fall_back_to_polling(limit: str) -> None:
    # Real limits, lowered in a user namespace of its own (the machine's stay as they are):
    # no instance left -> fast poll; no watch left -> fast poll, and inotify takes
    # over once a watch is available again. The scenarios are in limited_inotify.py.
    script = Path(__file__).with_name("limited_inotify.py")
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, str(script), limit],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
