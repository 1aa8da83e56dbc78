"""DirectoryWatcher when the token's directory itself changes: missing at start, removed and
recreated, swapped by rename, moved away, or under a file. Real inotify and real files; see
test_directory_watcher.py for the conventions (deadlines bound failures; an hour's poll means
only inotify can deliver).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from entra_tokend.emulator.kubelet import ProjectedVolume
from support import wait_until_async
from support.watcher import (
    DEADLINE,
    no_fast_poll_fixture,  # noqa: F401 - fixture
    replace_file,
    run,
    watching,
)


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
