"""The metrics/health listener under hostile clients: slots are not theirs to hold."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from entra_tokend.emulator import Emulator
from support import STORAGE, DaemonProcess, emulator_env, write_config
from support.processes import free_port, healthz


def test_clients_pipelining_without_reading_do_not_starvehealthz(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Connections that pipeline /metrics and never read cannot hold every listener slot:
    /healthz still answers."""
    port = free_port()
    config = write_config(tmp_path / "c.toml", {"a": STORAGE})
    env = {**emulator_env(emulator, tmp_path / "o"), "ENTRA_TOKEND_LISTEN": f"127.0.0.1:{port}"}
    d = daemon_factory("run", "--config", str(config), env=env)
    d.wait_event("ready: every token is on disk")
    hostile = []
    try:
        for _ in range(100):  # far more than the listener's 32 slots
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
            hostile.append(sock)
        for _ in range(5):
            assert healthz(port) == 200
    finally:
        for sock in hostile:
            sock.close()
    assert d.stop() == 0
