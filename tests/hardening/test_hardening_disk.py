"""Full and read-only filesystems (a real tmpfs), and file ownership."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator
from support import (
    STORAGE,
    offline_env,
    output_files,
    run_cli,
    sample_value,
    wait_until,
    write_config,
)
from support.hardening import FAST, remount, temp_files, try_mount_tmpfs, umount

NOBODY = 65534


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own, unmounted at the end."""
    mnt = tmp_path / "disk"
    why = try_mount_tmpfs(mnt, "256k")
    if why:
        pytest.skip(why)
    try:
        yield mnt
    finally:
        umount(mnt)


def fill(disk: Path) -> Path:
    """Write a filler file until the filesystem is full (unbuffered: no surprise at close)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    error = 0
    try:
        for _ in range(1024):  # 1024 x 4 KiB is far more than the 256 KiB tmpfs holds
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                error = exc.errno or 0
                break
    finally:
        os.close(fd)
    assert error == errno.ENOSPC
    return filler


def break_full(disk: Path) -> Callable[[], None]:
    filler = fill(disk)
    return filler.unlink


def break_readonly(disk: Path) -> Callable[[], None]:
    remount(disk, "ro")
    return lambda: remount(disk, "rw")


@pytest.mark.parametrize(
    ("breaker", "detail"),
    [(break_full, "disk full"), (break_readonly, "Read-only file system")],
    ids=["enospc", "erofs"],
)
def test_write_failure_keeps_old_file_logs_once_and_recovers(
    emulator: Emulator,
    tmp_path: Path,
    daemon_factory: Any,
    tmpfs: Path,
    *,
    breaker: Callable[[Path], Callable[[], None]],
    detail: str,
) -> None:
    out = tmpfs / "out"
    emulator.access_token_lifetime = 2
    config = write_config(
        tmp_path / "c.toml",
        body=f'[token.a]\nscope = "{STORAGE}"\n',
        listen="127.0.0.1:0",
        **FAST,
    )
    env = {
        **emulator.env(),
        "ENTRA_TOKEND_OUTPUT_DIR": str(out),
        "ENTRA_TOKEND_LOG_LEVEL": "debug",
    }
    d = daemon_factory("run", "--config", str(config), env=env)
    d.wait_event("token written", token="a")
    repair = breaker(tmpfs)
    failure = d.wait_event("token refresh failed", token="a", reason="write_error", timeout=15)
    assert detail in failure["detail"]
    current = (out / "a").read_bytes()  # no write can succeed from here on
    assert current.decode() in emulator.issued_tokens
    series = "entra_tokend_token_refresh_failures_total"
    # Retried on the backoff (each retry a fresh exchange); logged once, repeats quietly.
    wait_until(
        lambda: (sample_value(d.scrape(), series, reason="write_error", token="a") or 0) >= 3,
        timeout=15,
    )
    failures = [
        e for e in d.events() if e.get("event") == "token refresh failed" and e["token"] == "a"
    ]
    assert [e["level"] for e in failures].count("warning") == 1
    assert {e["level"] for e in failures} == {"warning", "debug"}
    assert (out / "a").read_bytes() == current
    assert temp_files(out) == []
    assert d.proc.poll() is None

    repair()
    d.wait_event("token recovered", token="a", timeout=15)
    wait_until(lambda: (out / "a").read_bytes().decode() in emulator.issued_tokens[-3:])
    assert d.stop() == 0
    assert output_files(out) == ["a"]


def test_file_owner_and_group_are_applied(emulator: Emulator, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    out = tmp_path / "out"
    config = tmp_path / "c.toml"
    config.write_text(
        f'file_owner = "nobody"\nfile_group = {NOBODY}\n'
        f'[token.a]\nscope = "{STORAGE}"\n'
        f'[token.b]\nscope = "{STORAGE}"\npath = "sub/b"\n'
    )
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out), "ENTRA_TOKEND_LISTEN": ""}
    result = run_cli("run", "--once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    for path in (out / "a", out / "sub" / "b"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        assert stat.S_IMODE(st.st_mode) == 0o640


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('file_owner = "no-such-user-8"', "no such user 'no-such-user-8'"),
        ('file_group = "no-such-group-8"', "no such group 'no-such-group-8'"),
        ("file_owner = -1", "-1 is not a valid user id"),
        ("file_group = 4294967295", "4294967295 is not a valid group id"),
    ],
)
def test_bad_owner_or_group_is_a_config_error(tmp_path: Path, line: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'{line}\n[token.a]\nscope = "{STORAGE}"\n')
    env = offline_env(tmp_path)
    result = run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 2
    assert message in result.stderr


def test_numeric_owner_given_as_a_string_is_an_id(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'file_owner = "{NOBODY}"\nfile_group = "0"\n[token.a]\nscope = "{STORAGE}"\n'
    )
    env = offline_env(tmp_path)
    result = run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert f"file_owner = {NOBODY}" in result.stdout
    assert "file_group = 0" in result.stdout
