"""The env file (sourced by a real shell and by azure-identity) and the emulator CLI process."""

from __future__ import annotations

import hashlib
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from emu_helpers import (
    JWT_BEARER,
    SCOPE,
    assert_entra_error,
    clean_env,
    sourced,
    tls_emulator_fixture,  # noqa: F401 - pytest fixtures
)

from entra_tokend.emulator import Emulator
from entra_tokend.emulator.server import is_loopback_peer

ENV_KEYS = {
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
}


def test_env_plain_http(emulator: Emulator) -> None:
    env = emulator.env()
    assert set(env) == ENV_KEYS
    assert env["AZURE_AUTHORITY_HOST"] == emulator.authority_host
    assert Path(env["AZURE_FEDERATED_TOKEN_FILE"]) == emulator.token_file
    assert Path(env["AZURE_FEDERATED_TOKEN_FILE"]).is_absolute()


def test_env_file_round_trips_through_a_shell(tmp_path: Path) -> None:
    # Quotes and spaces in the path must survive the shell quoting.
    state = tmp_path / "it's a dir"
    with Emulator(state, tls=True) as emu:
        path = emu.write_env_file(tmp_path / "out" / "emulator.env")
        text = path.read_text()
        assert all(re.fullmatch(r"[A-Z_]+='.*'", line) for line in text.splitlines())
        env = emu.env()
        assert set(env) == ENV_KEYS | {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}
        ca = str(emu.ca_file)
        assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == env["NODE_EXTRA_CA_CERTS"] == ca
        loaded = sourced(path)
        assert {k: loaded[k] for k in env} == env


def test_azure_identity_gets_a_token_using_only_the_env_file(tls_emulator: Emulator) -> None:
    env_file = tls_emulator.write_env_file(tls_emulator.state_dir / "env")
    # An unmodified app: WorkloadIdentityCredential configured from the environment alone.
    app = (
        "import hashlib, time\n"
        "from azure.identity import WorkloadIdentityCredential\n"
        "t = WorkloadIdentityCredential().get_token('https://vault.azure.net/.default')\n"
        "print(hashlib.sha256(t.token.encode()).hexdigest(), int(t.expires_on - time.time()))\n"
    )
    script = 'set -a; . "$1"; set +a; exec "$2" -c "$3"'
    proc = subprocess.run(
        ["bash", "-c", script, "bash", str(env_file), sys.executable, app],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    digest, remaining = proc.stdout.split()
    issued = tls_emulator.issued_tokens
    assert len(issued) == 1
    assert digest == hashlib.sha256(issued[0].encode()).hexdigest()
    assert 3500 < int(remaining) <= 3600
    (req,) = tls_emulator.token_requests()
    assert req.form["client_assertion"] == tls_emulator.token_file.read_text()


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("::ffff:10.0.0.1", False),
        ("garbage", False),
    ],
)
def test_admin_accepts_only_loopback_peers(peer: str, allowed: bool) -> None:
    assert is_loopback_peer(peer) is allowed


class CliEmulator:
    """``python -m entra_tokend.emulator`` running in a subprocess."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.state = tmp_path / "state"
        self.env_file = tmp_path / "emu.env"
        self.out = tmp_path / "emulator.out"
        self._out = open(self.out, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "entra_tokend.emulator",
                "--state-dir",
                str(self.state),
                "--env-file",
                str(self.env_file),
                *args,
            ],
            env=clean_env(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 30) -> str:
        """Wait until the env file exists and the banner is printed; return the URL."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.out.read_text()
            match = re.search(r"listening on (\S+)", text)
            if match and "env file:" in text and self.env_file.exists():
                return match.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"emulator exited {self.proc.returncode}:\n{text}")
            assert time.monotonic() < deadline, f"emulator not ready:\n{text}"
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


StartCli = Callable[..., CliEmulator]


@pytest.fixture
def cli_emulator(tmp_path: Path) -> Iterator[StartCli]:
    """Start emulator CLI processes; each is killed (if still running) at the end."""
    started: list[CliEmulator] = []

    def start(*args: str) -> CliEmulator:
        c = CliEmulator(tmp_path / str(len(started)), *args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def env_form(env: dict[str, str]) -> dict[str, str]:
    """A token request built only from the env file, reading the current projected token."""
    return {
        "grant_type": "client_credentials",
        "client_id": env["AZURE_CLIENT_ID"],
        "scope": SCOPE,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": Path(env["AZURE_FEDERATED_TOKEN_FILE"]).read_text(),
    }


def test_cli_serves_takes_admin_faults_and_exits_0_on_sigterm(cli_emulator: StartCli) -> None:
    cli = cli_emulator("--fail-next", "1:429:2", "--access-token-lifetime", "900")
    url = cli.wait_ready()
    assert url.startswith("https://127.0.0.1:")
    loaded = sourced(cli.env_file)
    assert loaded["AZURE_AUTHORITY_HOST"] == url
    ctx = ssl.create_default_context(cafile=loaded["SSL_CERT_FILE"])
    endpoint = f"{url}/{loaded['AZURE_TENANT_ID']}/oauth2/v2.0/token"
    with httpx.Client(verify=ctx, trust_env=False, timeout=10) as c:

        def token() -> httpx.Response:
            return c.post(endpoint, data=env_form(loaded))

        first = token()
        assert first.status_code == 429
        assert first.headers["retry-after"] == "2"
        ok = token()
        assert ok.status_code == 200
        assert ok.json()["expires_in"] == 900

        r = c.post(f"{url}/_admin/faults", json={"faults": [{"kind": "status", "status": 503}]})
        assert r.json() == {"queued": 1, "pending_faults": 1}
        assert token().status_code == 503

        assert c.post(f"{url}/_admin/lifetime", json={"seconds": 120}).status_code == 200
        assert token().json()["expires_in"] == 120

        assert c.post(f"{url}/_admin/expire-assertion").status_code == 200
        assert_entra_error(token(), 401, "invalid_client", 700024)
        rotated = c.post(f"{url}/_admin/rotate")
        assert rotated.json() == {"rotated": True}
        assert token().status_code == 200

        assert c.post(f"{url}/_admin/faults", json={"kind": "nope"}).status_code == 400
        assert c.post(f"{url}/_admin/unknown").status_code == 404
        status = c.get(f"{url}/_admin/status").json()
        assert status["statuses"] == [429, 200, 503, 200, 401, 200]

    cli.proc.send_signal(signal.SIGTERM)
    assert cli.proc.wait(timeout=15) == 0
    output = cli.out.read_text()
    assert "stopped" in output
    assert "POST /" not in output  # quiet by default: no per-request lines


def test_cli_plain_http_and_state_reuse(tmp_path: Path, cli_emulator: StartCli) -> None:
    state = str(tmp_path / "shared-state")
    first = cli_emulator("--no-tls", "--rotate-every", "0", "--state-dir", state)
    url = first.wait_ready()
    assert url.startswith("http://127.0.0.1:")
    ids = sourced(first.env_file)
    assert "SSL_CERT_FILE" not in ids
    with httpx.Client(trust_env=False, timeout=10) as c:
        endpoint = f"{ids['AZURE_AUTHORITY_HOST']}/{ids['AZURE_TENANT_ID']}/oauth2/v2.0/token"
        assert c.post(endpoint, data=env_form(ids)).status_code == 200
    first.proc.send_signal(signal.SIGINT)
    assert first.proc.wait(timeout=15) == 0

    second = cli_emulator("--no-tls", "--state-dir", state)
    second.wait_ready()
    again = sourced(second.env_file)
    # The same tenant and client across restarts, so users' configs keep working.
    assert again["AZURE_TENANT_ID"] == ids["AZURE_TENANT_ID"]
    assert again["AZURE_CLIENT_ID"] == ids["AZURE_CLIENT_ID"]
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=15) == 0


def test_cli_rejects_a_bad_listen_address(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "entra_tokend.emulator",
            "--state-dir",
            str(tmp_path),
            "--listen",
            "nonsense",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "HOST:PORT" in proc.stderr


def test_cli_identity_binding_and_registry_flags(cli_emulator: StartCli) -> None:
    cli = cli_emulator(
        "--identity-binding", "--sni-name", "proxy.test.local", "--registry", "127.0.0.1:5999"
    )
    url = cli.wait_ready()
    loaded = sourced(cli.env_file)
    proxy = loaded["AZURE_KUBERNETES_TOKEN_PROXY"]
    assert proxy.startswith("https://127.0.0.1:")
    assert loaded["AZURE_KUBERNETES_SNI_NAME"] == "proxy.test.local"
    ca = ssl.create_default_context(cafile=loaded["AZURE_KUBERNETES_CA_FILE"])
    endpoint = f"{proxy}/{loaded['AZURE_TENANT_ID']}/oauth2/v2.0/token"
    with httpx.Client(verify=ca, trust_env=False, timeout=10) as c:
        ok = c.post(
            endpoint, data=env_form(loaded), extensions={"sni_hostname": "proxy.test.local"}
        )
    assert ok.status_code == 200, ok.text
    output = cli.out.read_text()
    assert "identity-binding proxy: " + proxy in output
    assert "registry 127.0.0.1:5999: realm " + url + "/oauth2/token" in output
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.proc.wait(timeout=15) == 0
