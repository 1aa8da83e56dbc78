"""Hooks never outlive the daemon, every child is reaped however /proc is mounted, and a signal
hook reaches the reader that is alive now (issue 26 §1 and §3)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator
from entra_tokend.reaper import children
from support import STORAGE, VAULT, base_env, cli, wait_until, write_config
from support.hardening import FAST, pid_alive, processes_with, zombies_of

QUICK = "refresh_at = 0.1\njitter = 0\n"  # with 1 s tokens: a refresh every ~0.1 s


@pytest.mark.parametrize(
    "command",
    [
        ["sleep", "{duration}"],  # the example: `exec sleep 600`
        # A hook that ignores the polite signals: SIGKILL from the kernel all the same.
        ["/bin/sh", "-c", "trap '' TERM HUP INT; exec sleep {duration}"],
    ],
)
def test_a_sigkilled_daemon_takes_its_running_hook_along(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any, command: list[str]
) -> None:
    marker = f"600.{secrets.randbelow(10**6):06d}"  # this run's hook, whatever else runs
    argv = [part.format(duration=marker) for part in command]
    config = write_config(
        tmp_path / "c.toml",
        body=f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n'
        f"exec = {json.dumps(argv)}\ntimeout = 900\n",
        listen="",
        **FAST,
    )
    d = daemon_factory(
        "run",
        "--config",
        str(config),
        env={**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")},
    )
    hook = wait_until(lambda: [p for p in processes_with(marker) if pid_alive(p)], timeout=30)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=30)
    wait_until(lambda: not any(pid_alive(p) for p in hook), timeout=30)


@pytest.mark.parametrize("mount_proc", [False, True], ids=["host-proc", "own-proc"])
def test_as_pid_1_every_hook_orphan_is_reaped_however_proc_is_mounted(
    emulator: Emulator, tmp_path: Path, mount_proc: bool
) -> None:
    """The example: PID 1 in a PID namespace whose /proc is the host's left one zombie per hook
    run (the hook's background child, re-parented to PID 1)."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    out, runs = tmp_path / "out", tmp_path / "runs"
    emulator.access_token_lifetime = 1
    hook = ["/bin/sh", "-c", f"true & echo run >> {runs}; exit 0"]
    config = write_config(
        tmp_path / "c.toml",
        body=QUICK + f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\nexec = {json.dumps(hook)}\n',
        listen="",
        **FAST,
    )
    env = base_env({**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)})
    flags = ["--mount-proc"] if mount_proc else []
    daemon = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            *flags,
            "--kill-child",
            *cli("run", "--config", str(config)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        inner = wait_until(lambda: next(iter(children(daemon.pid)), None), timeout=30)
        wait_until(lambda: runs.exists() and len(runs.read_text().split()) >= 8, timeout=60)
        # Every orphan so far exited at once (`true`): none may stay a zombie.
        wait_until(lambda: zombies_of(inner) == [], timeout=10)
        os.kill(inner, signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(30)


READER = """
import os, signal, sys, time
from pathlib import Path
pid_file, seen = map(Path, sys.argv[1:3])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
pid_file.write_text(f"{os.getpid()}\\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    info = signal.sigtimedwait({signal.SIGHUP, signal.SIGTERM}, 1.0)
    if info is None:
        continue
    if info.si_signo == signal.SIGTERM:
        break
    with seen.open("a") as f:
        f.write("HUP\\n")
"""


def _dead_pid() -> int:
    probe = subprocess.Popen(["true"])
    probe.wait()
    return probe.pid


@pytest.mark.parametrize("before", ["dead-pid", "no-file", "empty-file"])
def test_a_signal_hook_reaches_the_reader_that_restarted_around_the_refresh(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any, before: str
) -> None:
    """The example (spiffe-helper #250): the pid file names a reader that has just exited; the
    new one writes its pid a moment later. One refresh only (long tokens): without the retry
    the new reader would hold the old token until the next refresh."""
    pid_file, seen = tmp_path / "reader.pid", tmp_path / "seen"
    if before == "dead-pid":
        pid_file.write_text(f"{_dead_pid()}\n")
    elif before == "empty-file":
        pid_file.write_text("")
    config = write_config(
        tmp_path / "c.toml",
        body=f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\npid_file = "{pid_file}"\n'
        f'signal = "HUP"\n[token.b]\nscope = "{VAULT}"\n',
        listen="",
        **FAST,
    )
    d = daemon_factory(
        "run",
        "--config",
        str(config),
        env={**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")},
    )
    d.wait_event("hook pid file names no live process; retrying", token="a", timeout=30)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(pid_file), str(seen)], env=base_env()
    )
    try:
        sent = d.wait_event("hook signal sent", token="a", timeout=30)
        assert sent["pid"] == reader.pid
        assert sent["attempts"] > 1
        wait_until(lambda: seen.exists() and seen.read_text() == "HUP\n", timeout=30)
        assert d.count("token written", token="a") == 1  # the retry, not a later refresh
        assert d.stop() == 0
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait(timeout=30)
