"""The real CLI as a subprocess: ``DaemonProcess`` runs any ``entra-tokend`` command (``run``,
``emulator``...) with its output in a file; ``run_cli`` runs one to completion."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from support.environment import DAEMON_SRC, base_env
from support.waiting import wait_until

STATE_DIR = ".entra-tokend-state"


def output_files(directory: Path) -> list[str]:
    """The names in an output_dir, sorted, without the daemon's own state directory (its
    provenance records): what a consumer of the volume sees besides that."""
    return sorted(name for name in os.listdir(directory) if name != STATE_DIR)


def cli(*args: str) -> list[str]:
    """argv for the real CLI."""
    return [sys.executable, "-m", "entra_tokend", *args]


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (``base_env`` plus ``env``), capturing stdout and stderr."""
    return subprocess.run(
        cli(*args),
        env=base_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit status (-9 if killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class DaemonProcess:
    """An ``entra-tokend`` command in a subprocess, its output (JSON log lines) in ``log_path``.

    ``args`` follow ``python -m entra_tokend`` (``["run", "--config", ...]``); the environment
    is ``base_env(env)`` with ``ENTRA_TOKEND_LOG_FORMAT=json`` unless ``env`` says otherwise.
    ``spawned`` and ``spawned_wall`` are the monotonic and wall-clock times just before spawn.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        daemon_src: Path = DAEMON_SRC,
        pycache: Path | None = None,
    ) -> None:
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        child_env = base_env(
            {"ENTRA_TOKEND_LOG_FORMAT": "json", **env}, daemon_src=daemon_src, pycache=pycache
        )
        self.spawned_wall = time.time()
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            cli(*args), env=child_env, stdout=self._log, stderr=subprocess.STDOUT, text=True
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def log_text(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """Parsed JSON log lines (every complete line must parse).

        The process may be writing while we read: a last line without its newline is not
        complete yet and is left for the next call.
        """
        complete = self.log_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def _matching(self, event: str, match: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_event(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first log event named ``event`` with the given fields; waits for it.

        Fails at once, with the log, if the process exits without logging it.
        """

        def find() -> dict[str, Any] | None:
            exited = self.proc.poll() is not None
            found = self._matching(event, match)
            if found:
                return found[0]
            if exited:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.log_text()}")
            return None

        return wait_until(find, timeout, what=f"log event {event!r} {match or ''}")

    def count(self, event: str, **match: Any) -> int:
        """How many log events match."""
        return len(self._matching(event, match))

    def scrape(self) -> str:
        """GET /metrics (text format) from the port its "listening" log event names."""
        port = int(self.wait_event("listening")["listen"].rpartition(":")[2])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
        return text

    def signal(self, sig: int) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout`` s); returns the exit code."""
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for a daemon's listen address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def healthz(port: int) -> int:
    """The HTTP status of ``GET /healthz`` on ``127.0.0.1:port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        status: int = resp.status
    return status
