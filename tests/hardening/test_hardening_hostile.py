"""A hostile or buggy neighbour on the shared volume: planted symlinks, directories, names."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.config import ConfigError, Overrides, load_config
from entra_tokend.emulator import Emulator
from entra_tokend.model import LOCK_NAME, is_temp_name
from entra_tokend.outputs.writer import WriteError, remove_stale_temp_files, write_atomic
from support import (
    STORAGE,
    VAULT,
    emulator_env,
    offline_env,
    output_files,
    run_cli,
    sample_value,
    wait_until,
    write_config,
)
from support.hardening import FAST, temp_files

NOBODY = 65534


def test_symlink_planted_at_token_path_is_replaced_never_followed(
    emulator: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious"
    precious.write_text("not yours")
    (out / "storage").symlink_to(precious)
    (out / "missing").symlink_to(outside / "created-through-link")  # a dangling one too
    result = run_cli(
        "run",
        "--once",
        "--token",
        f"storage={STORAGE}",
        "--token",
        f"missing={VAULT}",
        env=emulator_env(emulator, out),
    )
    assert result.returncode == 0, result.stderr
    assert precious.read_text() == "not yours"
    assert sorted(os.listdir(outside)) == ["precious"]
    for name in ("storage", "missing"):
        st = (out / name).lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
    assert (out / "storage").read_text() in emulator.issued_tokens


def test_directory_planted_at_token_path_is_reported_not_deleted(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    (out / "b" / "theirs").write_text("keep me")
    emulator.access_token_lifetime = 2
    config = write_config(
        tmp_path / "c.toml",
        body=f'[token.a]\nscope = "{STORAGE}"\n[token.b]\nscope = "{VAULT}"\n',
        listen="127.0.0.1:0",
        **FAST,
    )
    d = daemon_factory(
        "run",
        "--config",
        str(config),
        env={
            **emulator.env(),
            "ENTRA_TOKEND_OUTPUT_DIR": str(out),
            "ENTRA_TOKEND_LOG_LEVEL": "debug",
        },
    )
    failure = d.wait_event("token refresh failed", token="b", reason="write_error")
    assert "is a directory" in failure["detail"]
    d.wait_event("token written", token="a")
    series = "entra_tokend_token_refresh_failures_total"
    # retried on the backoff, logged as a warning once, then quietly until the state changes
    wait_until(
        lambda: (sample_value(d.scrape(), series, reason="write_error", token="b") or 0) >= 3
    )
    warnings = [
        e for e in d.events() if e.get("event") == "token refresh failed" and e.get("token") == "b"
    ]
    assert [e["level"] for e in warnings].count("warning") == 1
    assert d.proc.poll() is None
    assert (out / "b" / "theirs").read_text() == "keep me"
    assert temp_files(out) == []
    assert d.stop() == 0


def test_symlinked_subdirectory_is_not_followed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "sub").symlink_to(outside)
    with pytest.raises(WriteError, match="symlink"):
        write_atomic(out / "sub" / "a", b"token", 0o640, root=out)
    assert os.listdir(outside) == []
    # a real subdirectory works, and no temp file stays behind
    (out / "real").mkdir()
    write_atomic(out / "real" / "a", b"token", 0o640, root=out)
    assert os.listdir(out / "real") == ["a"]


def test_failed_write_leaves_target_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a"
    target.mkdir()
    with pytest.raises(WriteError, match="is a directory"):
        write_atomic(target, b"token", 0o640)
    assert target.is_dir()
    assert os.listdir(tmp_path) == ["a"]
    with pytest.raises(WriteError, match="empty"):
        write_atomic(tmp_path / "b", b"", 0o640)
    assert os.listdir(tmp_path) == ["a"]


@pytest.mark.parametrize(
    ("mode", "allow", "code"),
    [(0o777, False, 0), (0o777, True, 0), (0o1777, False, 0)],
    ids=["world-writable", "allowed", "sticky"],
)
def test_world_writable_output_dir(
    emulator: Emulator, tmp_path: Path, mode: int, allow: bool, code: int
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(mode)
    config = tmp_path / "c.toml"
    config.write_text(f"allow_world_writable = {str(allow).lower()}\n")
    result = run_cli(
        "run", "--once", "--config", str(config), "--token", f"a={STORAGE}",
        env=emulator_env(emulator, out),
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert output_files(out) == ["a"]
    # Started (an emptyDir with fsGroup is exactly this), with a warning unless allowed.
    warned = "world-writable without the sticky bit" in result.stderr
    assert warned == (mode == 0o777 and not allow)


def test_stale_temp_cleanup_removes_only_our_regular_files(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    ours = ".a.entra-tokend-0123456789abcdef.tmp"
    (d / ours).write_bytes(b"half")
    victim = tmp_path / "victim"
    victim.write_text("target of a symlink")
    link = ".b.entra-tokend-00000000000000aa.tmp"
    (d / link).symlink_to(victim)
    directory = ".c.entra-tokend-00000000000000bb.tmp"
    (d / directory).mkdir()
    lookalikes = [
        "a.entra-tokend-0123456789abcdef.tmp",  # not hidden
        ".a.entra-tokend-0123456789ABCDEF.tmp",  # not our hex
        ".a.entra-tokend-0123456789abcde.tmp",  # too short
        ".a.entra-tokend-0123456789abcdef.tmp.bak",
        "a",
        LOCK_NAME,
    ]
    for name in lookalikes:
        (d / name).write_text("someone else's")
    others = []
    if os.geteuid() == 0:  # as root, chown can make a file someone else's
        theirs = ".d.entra-tokend-00000000000000cc.tmp"
        (d / theirs).write_text("another uid's temp file")
        os.chown(d / theirs, NOBODY, NOBODY)
        others.append(theirs)
    assert remove_stale_temp_files(d) == [ours]
    assert sorted(os.listdir(d)) == sorted([link, directory, *lookalikes, *others])
    assert victim.read_text() == "target of a symlink"
    assert not is_temp_name(LOCK_NAME)


@pytest.mark.parametrize("path", [LOCK_NAME, ".a.entra-tokend-0123456789abcdef.tmp"])
def test_token_path_may_not_take_our_lock_or_temp_names(tmp_path: Path, path: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[token.a]\nscope = "{STORAGE}"\npath = "{path}"\n')
    env = offline_env(tmp_path)
    result = run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 2
    assert "keeps for itself (its lock, temp files or state directory)" in result.stderr


def test_a_foreign_world_writable_subdirectory_is_refused(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A neighbour's world-writable subdirectory (0777, theirs) is refused: they could swap
    the file."""
    out = tmp_path / "out"
    (out / "docker").mkdir(parents=True)
    os.chown(out / "docker", NOBODY, NOBODY)
    (out / "docker").chmod(0o777)
    config = tmp_path / "c.toml"
    config.write_text(f'[token.x]\nscope = "{STORAGE}"\npath = "docker/x"\n')
    env = {**emulator_env(emulator, out), "ENTRA_TOKEND_LOG_FORMAT": "json"}
    result = run_cli("run", "--once", "--deadline", "2", "--config", str(config), env=env)
    assert result.returncode != 0
    assert f"owned by uid {NOBODY} and writable by others" in result.stderr
    assert os.listdir(out / "docker") == []


@pytest.mark.parametrize("path", [".entra-tokend-state/s.json", "sub/"])
def test_a_token_path_in_the_state_directory_or_ending_in_a_slash_is_refused(
    tmp_path: Path, path: str
) -> None:
    """A token path inside the daemon's state directory (it would be overwritten by the
    daemon's own record) or ending in a slash is a config error naming token.NAME.path."""
    config = tmp_path / "c.toml"
    config.write_text(f'[token.s]\nscope = "{STORAGE}"\npath = "{path}"\n')
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
    }
    with pytest.raises(ConfigError) as info:
        load_config(Overrides(config=str(config), output_dir=str(tmp_path / "out")), env)
    assert any(line.startswith("token.s.path:") for line in info.value.problems)
