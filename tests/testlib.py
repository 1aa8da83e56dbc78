"""Test helpers: the real CLI as a subprocess, its JSON logs, polling with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
DAEMON_SRC = REPO / "daemon"
T = TypeVar("T")

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
GRAPH = "https://graph.microsoft.com/.default"


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for the CLI: no inherited AZURE_*/ENTRA_TOKEND_* settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AZURE_", "ENTRA_TOKEND_", "SSL_CERT", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env["PYTHONPATH"] = str(DAEMON_SRC)
    env.pop("HTTPS_PROXY", None)
    env.pop("https_proxy", None)
    env.update(extra or {})
    return env


def cli(*args: str) -> list[str]:
    """argv for the real CLI."""
    return [sys.executable, "-m", "entra_tokend", *args]


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        cli(*args),
        env=base_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


class DaemonProcess:
    """The real daemon in a subprocess, its JSON log lines captured to a file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cli(*args),
            env=base_env({"ENTRA_TOKEND_LOG_FORMAT": "json", **env}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def log_text(self) -> str:
        """Everything the daemon printed so far."""
        return self.log_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        """Parsed JSON log lines (every complete line must parse).

        The daemon may be writing while we read: a last line without its newline is not
        complete yet and is left for the next call.
        """
        complete = self.log_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def wait_event(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """Wait for a log event with the given name and fields."""

        def find() -> dict[str, Any] | None:
            exited = self.proc.poll() is not None
            for e in self.events():
                if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                    return e
            if exited:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            return None

        return wait_until(find, timeout)

    def count(self, event: str, **match: Any) -> int:
        """How many log events match."""
        return sum(
            1
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        )

    def signal(self, sig: int) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self._log.close()
        return self.proc.returncode


def emulator_env(emu: Any, out: Path, **extra: str) -> dict[str, str]:
    """The daemon's environment against ``emu``: its AZURE_* settings, ``out``, no HTTP port."""
    return {**emu.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out), "ENTRA_TOKEND_LISTEN": "", **extra}


def offline_env(tmp_path: Path) -> dict[str, str]:
    """Identity settings that validate but reach nothing: enough for ``check-config``."""
    return {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
    }
