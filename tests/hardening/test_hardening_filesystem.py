"""The filesystem is hostile and umask is not a mode: directories, symlinks, FIFOs, emptyDir."""

from __future__ import annotations

import os
import socket
import stat
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator
from support import STORAGE, DaemonProcess, emulator_env, output_files, run_cli, wait_until


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o077, 0o000], ids=["umask-077", "umask-000"])
def test_created_directories_get_the_documented_mode_whatever_the_umask(
    emulator: Emulator, tmp_path: Path, mask: int
) -> None:
    out = tmp_path / "missing" / "out"
    config = tmp_path / "c.toml"
    config.write_text(f'[token.x]\nscope = "{STORAGE}"\npath = "sub/dir/x"\n')
    with umask(mask):  # inherited by the daemon process
        result = run_cli("run", "--once", "--config", str(config), env=emulator_env(emulator, out))
    assert result.returncode == 0, result.stderr
    for directory in (out.parent, out, out / "sub", out / "sub" / "dir"):
        assert _mode(directory) == 0o750, directory
    assert _mode(out / "sub" / "dir" / "x") == 0o640


def test_a_planted_directory_symlink_is_never_followed(emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    out.mkdir(mode=0o750)
    elsewhere.mkdir()
    stale = ".x.entra-tokend-0123456789abcdef.tmp"  # looks like our own leftover
    (elsewhere / stale).write_text("not ours to delete")
    (out / "sub").symlink_to(elsewhere)
    config = tmp_path / "c.toml"
    config.write_text(f'[token.x]\nscope = "{STORAGE}"\npath = "sub/x"\n')
    env = emulator_env(emulator, out, ENTRA_TOKEND_LOG_FORMAT="json")
    result = run_cli("run", "--once", "--deadline", "2", "--config", str(config), env=env)
    assert result.returncode != 0
    assert sorted(os.listdir(elsewhere)) == [stale]  # no mkdir, no token, no cleanup there
    assert "symlink" in result.stderr


def test_a_fifo_as_projected_token_never_blocks_the_daemon(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    fifo = tmp_path / "fifo-token"
    os.mkfifo(fifo)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **emulator_env(emulator, tmp_path / "out"),
        "AZURE_FEDERATED_TOKEN_FILE": str(fifo),
        "ENTRA_TOKEND_LISTEN": f"127.0.0.1:{port}",
    }
    d = daemon_factory("run", "--token", f"a={STORAGE}", env=env)
    event = d.wait_event("projected token unavailable")
    assert "not a regular file" in event["detail"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as probe:
        assert probe.status == 200  # the event loop is not stuck on the FIFO
    assert d.stop() == 0


def test_a_world_writable_emptydir_with_fsgroup_starts_with_a_warning(
    emulator: Emulator, tmp_path: Path
) -> None:
    """kubelet makes a disk-backed emptyDir 0777 and fsGroup adds setgid: mode 2777."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o2777)
    env = emulator_env(emulator, out, ENTRA_TOKEND_LOG_FORMAT="json")
    result = run_cli("run", "--once", "--token", f"a={STORAGE}", env=env)
    assert result.returncode == 0, result.stderr
    assert output_files(out) == ["a"]
    assert "world-writable without the sticky bit" in result.stderr
    assert '"mode": "2777"' in result.stderr
    wait_until(lambda: (out / "a").stat().st_size > 0)
