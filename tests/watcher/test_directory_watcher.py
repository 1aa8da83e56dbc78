"""DirectoryWatcher against real inotify, real files and kubelet's real write sequence.

Every scenario runs in its own asyncio loop. The watcher's callback reads the token file, so a
test waits for "a callback that saw X" with a deadline; the deadline only bounds a failure, it
is never a speed target. Unless a test is about polling, the fallback poll is set to an hour so
that only inotify can deliver what the test waits for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from watch_helpers import (
    DEADLINE,
    HOUR,
    no_fast_poll_fixture,  # noqa: F401 - fixture
    replace_file,
    run,
    watching,
)

from entra_tokend.emulator.kubelet import ProjectedVolume
from testlib import wait_until_async


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
