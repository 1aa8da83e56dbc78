"""DirectoryWatcher when inotify alone is not enough: polling-only mode, idle costs, a failing
callback, no thread and no leaked descriptor, queue overflow, and inotify's limits reached
(real limits, lowered in a user namespace of its own).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from watch_helpers import (
    DEADLINE,
    HOUR,
    Recorder,
    no_fast_poll_fixture,  # noqa: F401 - fixture
    replace_file,
    run,
    watching,
)

from entra_tokend.emulator.kubelet import ProjectedVolume
from entra_tokend.watcher import DirectoryWatcher
from testlib import base_env, wait_until_async


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
