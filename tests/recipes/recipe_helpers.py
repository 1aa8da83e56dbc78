"""Support for the README recipe tests: the daemon once against the emulator, a recording HTTP
upstream, directories another UID can traverse, and the tools' presence.

The one place these tests import the shared helpers (``testlib``, the emulator's
``registry_helpers``), so a move of those touches only this file.
"""

from __future__ import annotations

import http.server
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "emulator"))

from registry_helpers import (
    RegistryFactory,
    RunningRegistry,
    Skopeo,
    SkopeoFactory,
    free_port,
    make_oci_layout,
    registry_factory_fixture,
    registry_tools_fixture,
    skopeo_fixture,
)

from entra_tokend.emulator import Emulator
from entra_tokend.emulator.pki import issue_server_files
from testlib import (
    STORAGE,
    DaemonProcess,
    base_env,
    emulator_env,
    jwt_claims,
    run_cli,
    sample_value,
    wait_until,
)

__all__ = [
    "STORAGE",
    "DaemonProcess",
    "Emulator",
    "RegistryFactory",
    "RunningRegistry",
    "Skopeo",
    "SkopeoFactory",
    "Upstream",
    "acquire_once",
    "base_env",
    "clean_env",
    "emulator_env",
    "free_port",
    "jwt_claims",
    "make_oci_layout",
    "registry_factory_fixture",
    "registry_tools_fixture",
    "require",
    "run_as",
    "run_cli",
    "sample_value",
    "server_tls",
    "shared_dir",
    "skopeo_fixture",
    "wait_until",
]


def require(*tools: str) -> None:
    """Skip the test, naming what is missing, unless every tool is on PATH
    (``tests/tools.sh`` installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (run tests/tools.sh)")


def acquire_once(emu: Emulator, config: Path, out: Path) -> None:
    """``entra-tokend run --once --config CONFIG`` against ``emu``, files into ``out``;
    fails the test (with the daemon's output) unless it exits 0."""
    result = run_cli("run", "--once", "--config", str(config), env=emulator_env(emu, out))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory every UID may traverse (mode 0755, under the system temp dir):
    pytest's own temp dirs are 0700 root, which would hide any file from another UID."""
    path = Path(tempfile.mkdtemp(prefix="entra-tokend-recipe-"))
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Upstream:
    """An HTTP server on loopback that answers 200 and records each request's
    ``Authorization`` headers (a list per request: a header sent twice shows as two)."""

    seen: list[list[str]] = field(default_factory=list)
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve https

    def __post_init__(self) -> None:
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get_all("Authorization") or [])
                body = b"ok\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads ``seen``, not a log

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with ``tls``)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()


def server_tls(emu: Emulator, directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 signed by ``emu``'s CA (``emu.ca_file``)."""
    files = issue_server_files(
        emu.state_dir / "tls", directory, dns_names=["localhost"], ips=["127.0.0.1"]
    )
    return files.server_cert, files.server_key


def run_as(
    uid: int, gid: int, argv: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``uid:gid`` with no supplementary groups (``setpriv``), to completion."""
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def clean_env(**extra: str) -> dict[str, str]:
    """PATH only (no PG*/HOME of the developer), then ``extra``."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}
