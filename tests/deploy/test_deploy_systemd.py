"""systemd/: the unit verifies cleanly, is hardened, and matches the daemon's contract."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import base_env, tool
from support.deploy import SYSUSERS, UNIT, unit_settings

MAX_EXPOSURE = 2.0


def verify_root(root: Path, unit_text: str, exec_start: str) -> None:
    """Lay out the least of a system that `systemd-analyze verify --root` needs.

    verify loads the unit's default dependencies (sysinit.target, basic.target, shutdown.target)
    and insists that every Exec*= binary exists and is executable; the host may have neither
    those units nor entra-tokend installed, so both come from the test.
    """
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for target in ("sysinit.target", "basic.target", "shutdown.target"):
        (units / target).write_text(f"[Unit]\nDescription={target}\n")
    # ExecStart's binary, and the helpers other Exec*= lines name (ExecReload's /bin/kill).
    others = [
        shlex.split(line.partition("=")[2])[0]
        for line in unit_text.splitlines()
        if line.startswith("Exec") and not line.startswith("ExecStart=")
    ]
    for path in (exec_start, *others):
        binary = root / path.lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    (system / "entra-tokend.service").write_text(unit_text)


def run_verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("systemd-analyze"),
            "verify",
            "--man=no",
            "--generators=no",
            f"--root={root}",
            "entra-tokend.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def exec_start_binary() -> str:
    (exec_start,) = unit_settings(UNIT)["Service.ExecStart"]
    return shlex.split(exec_start)[0]


def test_unit_verifies_without_any_message(tmp_path: Path) -> None:
    verify_root(tmp_path / "root", UNIT.read_text(), exec_start_binary())
    result = run_verify(tmp_path / "root")
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and unparsable values, and only says so: demand silence.
    assert (result.stdout + result.stderr).strip() == ""


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("\nUMask=0027\n", "\nUMask=0027\nProtectSytem=strict\n"), "Unknown key"),
        (("\nProtectSystem=strict\n", "\nProtectSystem=stricter\n"), "Failed to parse"),
    ],
)
def test_the_verify_harness_reports_mistakes(
    tmp_path: Path, change: tuple[str, str], complaint: str
) -> None:
    """The silence demanded above is meaningful: the same harness speaks up about a bad unit."""
    text = UNIT.read_text()
    assert change[0] in text
    verify_root(tmp_path / "root", text.replace(change[0], change[1], 1), exec_start_binary())
    result = run_verify(tmp_path / "root")
    assert complaint in result.stdout + result.stderr


def test_verify_needs_the_binary_it_starts(tmp_path: Path) -> None:
    verify_root(tmp_path / "root", UNIT.read_text(), exec_start_binary())
    shutil.rmtree(tmp_path / "root" / exec_start_binary().lstrip("/").split("/")[0])
    result = run_verify(tmp_path / "root")
    assert result.returncode != 0
    assert "is not executable" in result.stdout + result.stderr


def test_security_exposure_is_at_most_two() -> None:
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"Overall exposure level for entra-tokend\.service: (\d+\.\d+)", result.stdout
    )
    assert match, result.stdout[-2000:]
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_speaks_the_daemons_protocol() -> None:
    s = unit_settings(UNIT)
    assert s["Service.Type"] == ["notify"]
    # Only the daemon itself, never a hook's child, may report READY/WATCHDOG.
    assert s["Service.NotifyAccess"] == ["main"]
    assert s["Service.WatchdogSec"], "the daemon pings WATCHDOG=1; systemd must expect it"
    # Exit status 2 is a configuration error: restarting in a loop cannot fix it.
    assert s["Service.RestartPreventExitStatus"] == ["2"]
    assert s["Service.Restart"] == ["on-failure"]
    argv = shlex.split(s["Service.ExecStart"][0])
    assert argv[1:] == ["run", "--config", "/etc/entra-tokend/entra-tokend.toml"]
    assert s["Service.EnvironmentFile"] == ["-/etc/entra-tokend/env"]
    # `systemctl reload` sends the daemon's reload signal (SIGHUP) to the daemon only.
    assert [shlex.split(v) for v in s["Service.ExecReload"]] == [["/bin/kill", "-HUP", "$MAINPID"]]


def test_unit_gives_the_default_output_dir_to_one_group() -> None:
    s = unit_settings(UNIT)
    # /run/entra-tokend is the daemon's default output_dir: no flag or setting needed.
    assert s["Service.RuntimeDirectory"] == ["entra-tokend"]
    assert s["Service.RuntimeDirectoryMode"] == ["0750"]
    # Consumers keep their last good tokens while the daemon restarts.
    assert s["Service.RuntimeDirectoryPreserve"] == ["restart"]
    assert s["Service.User"] == ["entra-tokend"]
    assert s["Service.Group"] == ["entra-tokend"]
    assert s["Service.ProtectSystem"] == ["strict"]
    assert s["Service.NoNewPrivileges"] == ["yes"]
    assert s["Service.CapabilityBoundingSet"] == [""]


def test_sysusers_creates_the_units_user_and_group(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    group = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    s = unit_settings(UNIT)
    (user,) = s["Service.User"]
    (grp,) = s["Service.Group"]
    assert user in passwd
    assert grp in group
    # The user's primary group is the unit's group, and it cannot log in.
    assert passwd[user][3] == group[grp][2]
    assert passwd[user][6].endswith("nologin")
    assert 0 < int(passwd[user][2]) < 1000


MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_MDWE) failed, errno {ctypes.get_errno()}: kernel older than 6.3?")
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_daemon_runs_under_memory_deny_write_execute(emulator: Any, tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes must not break CPython, ctypes (the inotify binding) or TLS.

    The kernel's own MDWE (prctl, Linux 6.3+) applies the same rule as the unit's seccomp filter:
    no mapping may become writable and executable. It is inherited across execve.
    """
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_WRAPPER, sys.executable, "-c", MMAP_WX],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "refused", "the wrapper must really forbid W+X memory"

    out = tmp_path / "tokens"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MDWE_WRAPPER,
            sys.executable,
            "-m",
            "entra_tokend",
            "run",
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--output-dir",
            str(out),
            "--token",
            "arm=https://management.azure.com/.default",
        ],
        env=base_env(emulator.env()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "arm").read_text().strip() in emulator.issued_tokens


MMAP_WX = """
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("refused")
else:
    print("allowed")
"""
