"""Signals at every moment (issue 26 §1): a SIGHUP or SIGTERM that arrives while the daemon is
still starting is held and then applied, never fatal; ``run --once`` ignores SIGHUP."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from entra_tokend.emulator import Emulator, Fault
from support import STORAGE, wait_until, write_config


def _blocked(pid: int, sig: signal.Signals) -> bool:
    """True while ``sig`` is in the process's blocked mask (/proc/PID/status ``SigBlk``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_a_sighup_during_start_up_is_held_then_reloads(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    """The example: `entra-tokend run … & sleep 0.15; kill -HUP $!` killed the daemon."""
    config = write_config(
        tmp_path / "c.toml", body=f'[token.a]\nscope = "{STORAGE}"\n', listen="127.0.0.1:0"
    )
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    d = daemon_factory("run", "--config", str(config), env=env)
    # The moment the CLI holds its signals — before configuration, lock and listeners.
    wait_until(lambda: _blocked(d.pid, signal.SIGHUP) or d.proc.poll() is not None, timeout=30)
    os.kill(d.pid, signal.SIGHUP)
    d.wait_event("configuration reloaded", timeout=30)
    d.wait_event("token written", token="a", timeout=30)
    assert d.proc.poll() is None
    assert not _blocked(d.pid, signal.SIGHUP)  # released: hooks must not inherit the mask
    assert d.stop() == 0


def test_a_sigterm_during_start_up_is_a_clean_stop(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    config = write_config(
        tmp_path / "c.toml", body=f'[token.a]\nscope = "{STORAGE}"\n', listen="127.0.0.1:0"
    )
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    d = daemon_factory("run", "--config", str(config), env=env)
    wait_until(lambda: _blocked(d.pid, signal.SIGTERM) or d.proc.poll() is not None, timeout=30)
    os.kill(d.pid, signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 0
    d.wait_event("entra-tokend stopping")


def test_run_once_ignores_sighup_and_still_finishes(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    """A SIGHUP at any time killed `run --once`; it has no reload to apply, so it is ignored."""
    # Every token request hangs until the test lets them through: --once is surely running.
    emulator.inject(Fault("hang", count=1000, delay=30))
    config = write_config(
        tmp_path / "c.toml",
        body=f'[token.a]\nscope = "{STORAGE}"\n',
        listen="",
        request_timeout=1.0,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    d = daemon_factory("run", "--once", "--config", str(config), env=env)
    d.wait_event("entra-tokend starting", timeout=30)
    for _ in range(3):
        os.kill(d.pid, signal.SIGHUP)
    d.wait_event("SIGHUP ignored: run --once does not reload", timeout=30)
    emulator.clear_faults()
    assert d.proc.wait(timeout=60) == 0
    assert (tmp_path / "out" / "a").read_text() in emulator.issued_tokens
