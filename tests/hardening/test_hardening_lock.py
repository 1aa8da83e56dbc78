"""One writer per output directory: the flock on .entra-tokend.lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator
from entra_tokend.lock import DirectoryLock, LockError, LockHeld
from entra_tokend.model import LOCK_NAME
from support import STORAGE, emulator_env, output_files, run_cli


def test_second_daemon_on_the_same_directory_exits_2_naming_the_holder(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    env = emulator_env(emulator, out)
    first = daemon_factory("run", "--token", f"a={STORAGE}", env=env)
    first.wait_event("token written", token="a")
    lock = out / LOCK_NAME
    assert lock.read_text() == f"{first.proc.pid}\n"
    good = (out / "a").read_bytes()
    planted = out / ".a.entra-tokend-0123456789abcdef.tmp"  # looks like a live write of the first
    planted.write_bytes(b"in progress")

    second = run_cli("run", "--once", "--token", f"a={STORAGE}", env=env)
    assert second.returncode == 2
    assert "in use by another entra-tokend" in second.stderr
    assert f"pid {first.proc.pid}" in second.stderr
    # The loser touched nothing: not the token, not the first daemon's temp files, not the lock.
    assert planted.exists()
    assert (out / "a").read_bytes() == good
    assert lock.read_text() == f"{first.proc.pid}\n"
    assert first.proc.poll() is None
    planted.unlink()

    # SIGKILL leaves the file but the kernel drops the lock: the next daemon starts.
    first.proc.kill()
    first.proc.wait()
    assert lock.exists()
    again = daemon_factory("run", "--token", f"a={STORAGE}", env=env)
    again.wait_event("ready: every token is on disk")
    assert lock.read_text() == f"{again.proc.pid}\n"
    # A clean exit removes the lock file: nothing but tokens stays in the directory.
    assert again.stop() == 0
    assert output_files(out) == ["a"]


def test_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    held = DirectoryLock.acquire(tmp_path)
    # flock conflicts between two open files even within one process
    with pytest.raises(LockHeld) as caught:
        DirectoryLock.acquire(tmp_path)
    assert caught.value.pid == os.getpid()
    assert str(os.getpid()) in str(caught.value)
    held.release()
    held.release()  # idempotent
    assert not (tmp_path / LOCK_NAME).exists()
    DirectoryLock.acquire(tmp_path).release()


def test_lock_reports_a_holder_without_a_pid(tmp_path: Path) -> None:
    held = DirectoryLock.acquire(tmp_path)
    (tmp_path / LOCK_NAME).write_text("")  # e.g. a holder between locking and writing its pid
    with pytest.raises(LockHeld, match="pid is not recorded") as caught:
        DirectoryLock.acquire(tmp_path)
    assert caught.value.pid is None
    held.release()


def test_lock_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("theirs")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(LockError, match="symlink"):
        DirectoryLock.acquire(out)
    assert victim.read_text() == "theirs"
    (out / LOCK_NAME).unlink()
    (out / LOCK_NAME).mkdir()
    with pytest.raises(LockError):
        DirectoryLock.acquire(out)


def test_release_leaves_a_replaced_lock_file_alone(tmp_path: Path) -> None:
    held = DirectoryLock.acquire(tmp_path)
    (tmp_path / LOCK_NAME).unlink()
    (tmp_path / LOCK_NAME).write_text("someone else's")
    held.release()
    assert (tmp_path / LOCK_NAME).read_text() == "someone else's"
