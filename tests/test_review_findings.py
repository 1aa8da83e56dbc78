"""Regressions for what a fresh reviewer, README in hand, broke (one test per finding)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from entra_tokend.assertion import AssertionMalformed, parse_assertion
from entra_tokend.emulator import Emulator
from entra_tokend.exchange import InvalidResponse, error_details, parse_token_response
from testlib import (
    STORAGE,
    VAULT,
    DaemonProcess,
    base_env,
    cli,
    emulator_env,
    wait_until,
    write_config,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        status: int = resp.status
    return status


def test_a_broken_log_pipe_never_stops_the_refreshes(emulator: Emulator, tmp_path: Path) -> None:
    """Finding 1: whatever reads stderr dies; tokens must still be refreshed, and a SIGTERM
    must still end in a clean exit (the lock file removed)."""
    emulator.access_token_lifetime = 2
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.toml",
        {"a": STORAGE},
        listen="",
        backoff_initial=0.05,
        backoff_max=0.2,
        min_refresh_interval=0,
    )
    proc = subprocess.Popen(
        cli("run", "--config", str(config)),
        env=base_env({**emulator_env(emulator, out), "ENTRA_TOKEND_LOG_FORMAT": "json"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # it runs and logs
        proc.stdout.close()  # the reader goes away: every later write is EPIPE
        issued = len(emulator.issued_tokens)
        wait_until(lambda: len(emulator.issued_tokens) >= issued + 3, timeout=30)
        wait_until(lambda: (out / "a").read_text() == emulator.issued_tokens[-1], timeout=10)
        proc.terminate()
        assert proc.wait(15) == 0
        assert not (out / ".entra-tokend.lock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_fifo_as_hook_pid_file_never_blocks_the_daemon(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Finding 2: a FIFO planted as pid_file used to freeze the loop, even against SIGTERM."""
    emulator.access_token_lifetime = 2
    fifo = tmp_path / "reader.pid"
    os.mkfifo(fifo)
    port = _free_port()
    body = f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\npid_file = "{fifo}"\n'
    config = write_config(
        tmp_path / "c.toml",
        {"b": VAULT},
        body=body,
        backoff_initial=0.05,
        backoff_max=0.2,
        min_refresh_interval=0,
    )
    env = {**emulator_env(emulator, tmp_path / "o"), "ENTRA_TOKEND_LISTEN": f"127.0.0.1:{port}"}
    d = daemon_factory("run", "--config", str(config), env=env)
    event = d.wait_event("hook pid file unusable", timeout=20)
    assert event["detail"] == "not a regular file"
    assert _healthz(port) == 200
    written = d.count("token written", token="b")
    wait_until(lambda: d.count("token written", token="b") > written, timeout=20)
    assert d.stop() == 0


def test_clients_pipelining_without_reading_do_not_starve_healthz(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Finding 3: connections that pipeline /metrics and never read used to hold every slot."""
    port = _free_port()
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
            assert _healthz(port) == 200
    finally:
        for sock in hostile:
            sock.close()
    assert d.stop() == 0


def test_the_endpoint_secret_never_reaches_a_hook_or_the_log(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Finding 4: a hook printing its environment showed the endpoint's secret."""
    secret = "TopSecretEndpointValue123"
    port = _free_port()
    body = (
        f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n'
        'exec = ["/bin/sh", "-c", "env; exit 3"]\n'
        f'[endpoint]\nlisten = "127.0.0.1:{port}"\nsecret_env = "MY_SECRET"\n'
        'allow = ["https://storage.azure.com"]\n'
    )
    config = write_config(tmp_path / "c.toml", body=body, listen="")
    env = {**emulator_env(emulator, tmp_path / "o"), "MY_SECRET": secret}
    d = daemon_factory("run", "--config", str(config), env=env)
    failed = d.wait_event("hook command failed", timeout=20)
    assert "ENTRA_TOKEND_TOKEN=a" in failed["output"]  # the hook did print its environment
    assert d.stop() == 0
    assert secret not in d.log_text()
    assert "MY_SECRET" not in failed["output"]


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": 'x";evil="1', "expires_in": 3600},
        {"access_token": "x$(id)`id`", "expires_in": 3600},
        {"access_token": "abc", "token_type": "Bearer\r\nX-Evil: 1", "expires_in": 3600},
        {"access_token": "abc", "token_type": 'Bearer"', "expires_in": 3600},
    ],
)
def test_token_answers_that_could_break_out_of_a_template_are_invalid(
    answer: dict[str, object],
) -> None:
    """Finding 5: quotes, ';', '$' and a CRLF token_type ended up inside nginx/JAAS files."""
    with pytest.raises(InvalidResponse):
        parse_token_response(json.dumps(answer).encode(), STORAGE, "rid", 1_800_000_000.0)


def test_a_foreign_world_writable_subdirectory_is_refused(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Finding 6: a neighbour's `docker/` (0777, theirs) was used; they could swap the file."""
    out = tmp_path / "out"
    (out / "docker").mkdir(parents=True)
    os.chown(out / "docker", 65534, 65534)
    (out / "docker").chmod(0o777)
    config = tmp_path / "c.toml"
    config.write_text(f'[token.x]\nscope = "{STORAGE}"\npath = "docker/x"\n')
    env = {**emulator_env(emulator, out), "ENTRA_TOKEND_LOG_FORMAT": "json"}
    result = subprocess.run(
        cli("run", "--once", "--deadline", "2", "--config", str(config)),
        env=base_env(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "owned by uid 65534 and writable by others" in result.stderr
    assert os.listdir(out / "docker") == []


@pytest.mark.parametrize("exp", ["99999999999999999999999999", "1e300", "253402300800", "-5"])
def test_an_out_of_range_exp_claim_is_malformed_not_a_crash(exp: str) -> None:
    """Finding 7: exp beyond what datetime holds crashed the daemon at start."""
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(f'{{"exp":{exp}}}'.encode()).rstrip(b"=")
    with pytest.raises(AssertionMalformed, match="exp claim is out of range"):
        parse_assertion(header + b"." + payload + b".")


def test_a_hook_printing_more_than_a_pipe_holds_is_not_a_timeout(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Finding 8: 300 KB of output filled the pipe and the hook was killed as timed out."""
    body = (
        f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n'
        'exec = ["/bin/sh", "-c", "head -c 300000 /dev/zero | tr \\"\\\\\\\\0\\" A"]\n'
        "timeout = 30\n"
    )
    config = write_config(tmp_path / "c.toml", body=body, listen="")
    env = {**emulator_env(emulator, tmp_path / "o"), "ENTRA_TOKEND_LOG_FORMAT": "json"}
    result = subprocess.run(
        cli("run", "--once", "--config", str(config)),
        env=base_env(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ran = [json.loads(line) for line in result.stderr.splitlines() if "hook command ran" in line]
    assert ran
    assert ran[0]["output_truncated"] is True


def test_an_echoed_assertion_is_redacted_before_it_is_cut() -> None:
    """Finding 9: a 500-character cut of an echoed assertion beat both redaction rules."""
    assertion = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ." + "eyJhdWQiOlsiYXBpOi8v" * 40 + ".sig"
    body = {
        "error": "invalid_client",
        "error_description": f"AADSTS70011: bad assertion {assertion} end",
        "trace_id": assertion,
    }
    details = error_details(400, body)
    assert details.description is not None
    assert "eyJhdWQiOlsi" not in details.description
    assert "eyJhbGciOiJSUzI1NiIs" not in details.description
    assert details.trace_id is None


# ---- the second review -------------------------------------------------------------------


def test_a_pid_file_naming_one_of_the_daemons_threads_is_refused() -> None:
    """Second review, 1: a thread id is a pid to kill(2); the hook stopped the daemon."""
    import threading

    from entra_tokend.hooks import _read_pid

    started, release = threading.Event(), threading.Event()
    ids: list[int] = []

    def work() -> None:
        ids.append(threading.get_native_id())
        started.set()
        release.wait(30)

    thread = threading.Thread(target=work)
    thread.start()
    try:
        started.wait(30)
        pid_file = Path(f"/tmp/entra-tokend-test-{os.getpid()}.pid")
        pid_file.write_text(f"{ids[0]}\n")
        try:
            with pytest.raises(ValueError, match="never signalled"):
                _read_pid(pid_file)
        finally:
            pid_file.unlink()
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_config_file_that_is_a_fifo_or_a_device_is_a_config_error(
    tmp_path: Path, kind: str
) -> None:
    """Second review, 2: a FIFO froze the daemon on SIGHUP; /dev/zero exhausted its memory."""
    from entra_tokend.config import ConfigError, read_toml

    path = tmp_path / "c.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_toml(path)


def test_a_token_proxy_ca_file_that_is_a_fifo_is_a_config_error(tmp_path: Path) -> None:
    """Second review, 3: a FIFO as AZURE_KUBERNETES_CA_FILE blocked check-config and run."""
    from entra_tokend.config.validate import Problems
    from entra_tokend.preflight.files import token_proxy_ca_file

    fifo = tmp_path / "ca"
    os.mkfifo(fifo)
    p = Problems()
    token_proxy_ca_file(fifo, "identity.default.token_proxy_ca_file", p)
    assert p.lines
    assert "not a regular file" in p.lines[0]


def test_an_access_token_that_is_the_client_assertion_is_refused() -> None:
    """Second review, 5: an echoing service made the daemon write the SA token to the file."""
    import asyncio

    import httpx

    from entra_tokend.exchange import ClientPool, EntraExchange
    from entra_tokend.model import Identity

    assertion = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlZ21lbnQtMTIz"

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": assertion, "expires_in": 3600})

    async def scenario() -> None:
        pool = ClientPool(transport=httpx.MockTransport(echo))
        ident = Identity("default", "t", "c", Path("/sa"), "https://login.example")
        try:
            with pytest.raises(InvalidResponse, match="client assertion"):
                await EntraExchange(pool).exchange(ident, STORAGE, assertion)
        finally:
            await pool.aclose()

    asyncio.run(scenario())


def test_a_jwt_signature_echoed_alone_is_redacted() -> None:
    """Second review, 6: the signature segment alone is most of the credential."""
    from entra_tokend.logging import redact_text, remember_secret

    signature = "P4IyVLocKtLEBHXWStmoZ9mCCEncqMnEDLw_X5vmlfQ"
    remember_secret(f"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ5In0.{signature}")
    assert signature not in redact_text(f"HTTP 400: {signature}")


@pytest.mark.parametrize(
    "proxy", ["http://user:pw@127.0.0.1:99999", "http://[user:pw@127.0.0.1:3128"]
)
def test_an_unusable_proxy_url_is_a_config_problem(proxy: str) -> None:
    """Second review, 7: these passed every check and failed every refresh as 'internal'."""
    from entra_tokend.preflight import Findings, check_proxies

    found = Findings()
    check_proxies({"HTTPS_PROXY": proxy}, found)
    assert found.problems
    assert "pw" not in found.problems[0]


@pytest.mark.parametrize("path", [".entra-tokend-state/s.json", "sub/"])
def test_a_token_path_in_the_state_directory_or_ending_in_a_slash_is_refused(
    tmp_path: Path, path: str
) -> None:
    """Second review, 8: the token file was overwritten by the daemon's own record."""
    from entra_tokend.config import ConfigError, Overrides, load_config

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


def test_a_secret_straddling_the_cut_of_hook_output_is_redacted(tmp_path: Path) -> None:
    """Second review, 9: the 4 KiB cut left 30 characters of an opaque token unredacted."""
    import asyncio
    from typing import Any

    from entra_tokend.hooks import OUTPUT_LIMIT, _exec
    from entra_tokend.logging import remember_secret
    from entra_tokend.model import Hook

    secret = "opq2345de73fd75b1dfa09a810aca1aa0123456789abcdefgh"
    remember_secret(secret)
    script = f"head -c {OUTPUT_LIMIT - 30} /dev/zero | tr '\\0' x; echo {secret}"
    seen: list[dict[str, Any]] = []

    class Log:
        def info(self, event: str, **fields: Any) -> None:
            seen.append(fields)

        warning = info

    hook = Hook(exec=("/bin/sh", "-c", script), timeout=30)
    assert asyncio.run(_exec(hook, "t", tmp_path / "t", Log()))
    (fields,) = seen
    assert secret[:20] not in fields["output"]
    assert fields["output"].endswith("[REDACTED]")
