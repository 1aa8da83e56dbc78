"""The real CLI against the emulator: the exchange, the files, `run` and `run --once`."""

from __future__ import annotations

import json
import signal
import stat
import uuid
from pathlib import Path
from typing import Any

from entra_tokend import __version__
from entra_tokend.emulator import Emulator, Fault
from support import STORAGE, VAULT, emulator_env, output_files, run_cli, wait_until


def test_once_writes_raw_token_with_mode_and_no_newline(emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out" / "nested"
    result = run_cli(
        "run", "--once", "--token", f"storage={STORAGE}", env=emulator_env(emulator, out)
    )
    assert result.returncode == 0, result.stderr
    target = out / "storage"
    data = target.read_bytes()
    assert data == emulator.issued_tokens[-1].encode()
    assert not data.endswith(b"\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # created when missing
    assert output_files(out) == ["storage"]  # no temp files left


def test_once_json_format_and_custom_mode(emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = tmp_path / "c.toml"
    config.write_text(
        f'file_mode = "0600"\n[token.kv]\nscope = "{VAULT}"\nformat = "json"\npath = "kv.json"\n'
    )
    result = run_cli("run", "--once", "--config", str(config), env=emulator_env(emulator, out))
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "kv.json").read_text())
    assert set(doc) == {
        "access_token",
        "token_type",
        "expires_on",
        "scope",
        "tenant_id",
        "client_id",
    }
    assert doc["access_token"] == emulator.issued_tokens[-1]
    assert doc["token_type"] == "Bearer"
    assert isinstance(doc["expires_on"], int)
    assert doc["scope"] == VAULT
    assert doc["tenant_id"] == emulator.tenant_id
    assert doc["client_id"] == emulator.client_id
    assert stat.S_IMODE((out / "kv.json").stat().st_mode) == 0o600


def test_request_form_and_headers(emulator: Emulator, tmp_path: Path) -> None:
    result = run_cli(
        "run",
        "--once",
        "--token",
        f"a={STORAGE}",
        "--token",
        f"b={VAULT}",
        env=emulator_env(emulator, tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    reqs = emulator.token_requests()
    assert len(reqs) == 2
    assertion = emulator.token_file.read_text().strip()
    ids = set()
    for req in reqs:
        assert req.path == f"/{emulator.tenant_id}/oauth2/v2.0/token"
        assert req.form["grant_type"] == "client_credentials"
        assert req.form["client_id"] == emulator.client_id
        assert req.form["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        assert req.form["client_assertion"] == assertion
        assert req.headers["user-agent"].startswith(f"entra-tokend/{__version__}")
        ids.add(str(uuid.UUID(req.headers["x-ms-client-request-id"])))
    assert {r.form["scope"] for r in reqs} == {STORAGE, VAULT}
    assert len(ids) == 2  # a new request id per request


def test_once_fails_at_once_on_configuration_error(emulator: Emulator, tmp_path: Path) -> None:
    env = emulator_env(emulator, tmp_path / "out", AZURE_CLIENT_ID=str(uuid.uuid4()))
    result = run_cli("run", "--once", "--deadline", "60", "--token", f"a={STORAGE}", env=env)
    assert result.returncode == 1
    assert len(emulator.token_requests()) == 1  # not retried
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failure = next(e for e in events if e["event"] == "token refresh failed")
    assert failure["aadsts"] == 700016
    assert failure["reason"] == "client_error"
    assert "AADSTS700016" in failure["description"]
    assert failure["trace_id"]
    assert failure["correlation_id"]
    assert failure["request_id"] == emulator.token_requests()[0].headers["x-ms-client-request-id"]
    assert not (tmp_path / "out" / "a").exists()


def test_once_retries_transient_errors(emulator: Emulator, tmp_path: Path) -> None:
    emulator.inject(Fault("status", status=503, count=2), Fault("reset"))
    result = run_cli(
        "run", "--once", "--token", f"a={STORAGE}", env=emulator_env(emulator, tmp_path / "out")
    )
    assert result.returncode == 0, result.stderr
    assert len(emulator.token_requests()) == 4
    assert (tmp_path / "out" / "a").read_text() == emulator.issued_tokens[-1]


def test_once_deadline_exits_1(emulator: Emulator, tmp_path: Path) -> None:
    emulator.inject(Fault("status", status=500, count=10_000))
    result = run_cli(
        "run",
        "--once",
        "--deadline",
        "1.5",
        "--token",
        f"a={STORAGE}",
        env=emulator_env(emulator, tmp_path / "out"),
    )
    assert result.returncode == 1
    assert "deadline reached before every token was on disk" in result.stderr
    assert '"missing": ["a"]' in result.stderr


def test_tls_with_ssl_cert_file_and_ca_file(tmp_path: Path) -> None:
    with Emulator(tmp_path / "emu", tls=True) as emu:
        env = emulator_env(emu, tmp_path / "out")
        assert emu.authority_host.startswith("https://")
        # SSL_CERT_FILE (from the emulator's env) is honoured
        assert run_cli("run", "--once", "--token", f"a={STORAGE}", env=env).returncode == 0
        # without it, verification fails: TLS is always verified
        env.pop("SSL_CERT_FILE")
        env.pop("REQUESTS_CA_BUNDLE", None)
        result = run_cli("run", "--once", "--deadline", "1", "--token", f"b={STORAGE}", env=env)
        assert result.returncode == 1
        assert '"reason": "network"' in result.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
        # a per-identity ca_file works too
        config = tmp_path / "c.toml"
        config.write_text(f'[identity.default]\nca_file = "{emu.ca_file}"\n')
        result = run_cli(
            "run", "--once", "--config", str(config), "--token", f"c={STORAGE}", env=env
        )
        assert result.returncode == 0, result.stderr


def test_run_until_sigterm_leaves_no_temp_files(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    d = daemon_factory(
        "run", "--token", f"a={STORAGE}", "--token", f"b={VAULT}", env=emulator_env(emulator, out)
    )
    wait_until(lambda: (out / "a").exists() and (out / "b").exists())
    d.wait_event("ready: every token is on disk")
    assert d.stop() == 0
    assert output_files(out) == ["a", "b"]
    d.wait_event("entra-tokend stopping")


def test_sigint_also_stops_cleanly(emulator: Emulator, tmp_path: Path, daemon_factory: Any) -> None:
    out = tmp_path / "out"
    d = daemon_factory("run", "--token", f"a={STORAGE}", env=emulator_env(emulator, out))
    d.wait_event("token written", token="a")
    d.signal(signal.SIGINT)
    assert d.proc.wait(10) == 0


def test_a_slow_token_does_not_delay_the_others(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    # The first request hangs until the emulator stops; the others must still be written.
    emulator.inject(Fault("hang"))
    d = daemon_factory(
        "run",
        *[f"--token=t{i}={STORAGE}" for i in range(5)],
        env=emulator_env(emulator, out, ENTRA_TOKEND_LOG_LEVEL="debug"),
    )
    wait_until(lambda: len([p for p in out.glob("t*")]) == 4, timeout=15)
    hung = emulator.token_requests()[0]
    assert hung.status == 0
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_logs_never_contain_tokens_or_the_assertion(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    emulator.inject(
        Fault("status", status=400, aadsts=700024),
        Fault("html"),
        Fault("no_expires_in"),
        Fault("status", status=429, retry_after="0"),
        Fault("status", status=503, target="acr_exchange"),
        Fault("status", status=401, target="acr_exchange"),
    )
    registry = emulator.authority_host.removeprefix("http://")
    emulator.add_registry(registry)  # the emulator's ACR token service for a docker config
    config = tmp_path / "c.toml"
    config.write_text(
        "backoff_initial = 0.05\nbackoff_max = 0.1\nconfig_error_backoff_max = 0.1\n"
        "min_refresh_interval = 0\n"
        f'[token.a]\nscope = "{STORAGE}"\n[token.b]\nscope = "{VAULT}"\nformat = "json"\n'
        f'[token.c]\nscope = "{STORAGE}"\nformat = "template"\ntemplate = "X-Key: $access_token"\n'
        f'[token.acr]\nformat = "docker-config"\nregistry = "http://{registry}"\n'
    )
    emulator.access_token_lifetime = 2
    d = daemon_factory(
        "run",
        "--config",
        str(config),
        env=emulator_env(emulator, out, ENTRA_TOKEND_LOG_LEVEL="debug"),
    )
    rendered: set[str] = set()

    def issued_enough(n: int) -> bool:
        if (out / "c").exists():
            rendered.add((out / "c").read_text())
        return len(emulator.issued_tokens) >= n and len(emulator.issued_acr_refresh_tokens) >= 2

    wait_until(lambda: issued_enough(8), timeout=20)
    emulator.rotate()
    wait_until(lambda: issued_enough(12), timeout=20)
    assert d.stop() == 0
    text = d.log_text()
    assert "token refresh failed" in text
    assert '"server_error"' in text  # the ACR faults were met and logged
    assert rendered
    secrets = [*emulator.issued_tokens, emulator.token_file.read_text().strip()]
    secrets += [*emulator.issued_acr_refresh_tokens, *rendered]
    secrets += [r.form["client_assertion"] for r in emulator.token_requests()]
    for secret in secrets:
        assert secret not in text
        # nor any long fragment of it (the signature part)
        assert secret.rsplit(".", 1)[-1] not in text
    assert "Bearer" not in text
    for event in d.events():
        assert {"timestamp", "level", "event"} <= set(event)


def test_once_replaces_a_still_valid_file_from_an_earlier_run(
    emulator: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = emulator_env(emulator, out)
    assert run_cli("run", "--once", "--token", f"a={STORAGE}", env=env).returncode == 0
    first = (out / "a").read_text()
    result = run_cli("run", "--once", "--deadline", "20", "--token", f"a={STORAGE}", env=env)
    assert result.returncode == 0, result.stderr
    assert len(emulator.token_requests()) == 2
    assert (out / "a").read_text() != first


def test_daemon_never_imports_the_emulator_or_cryptography(
    emulator: Emulator, tmp_path: Path
) -> None:
    env = {**emulator_env(emulator, tmp_path / "out"), "PYTHONPROFILEIMPORTTIME": "1"}
    result = run_cli("run", "--once", "--token", f"a={STORAGE}", env=env)
    assert result.returncode == 0, result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "entra_tokend.daemon" in imported  # the probe sees the daemon's imports
    assert not {m for m in imported if m.startswith(("entra_tokend.emulator", "cryptography"))}


def _once_events(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def test_once_states_its_verdict_in_one_line(emulator: Emulator, tmp_path: Path) -> None:
    """The example: ``--once`` logged "ready" twice (readiness's line and the verdict); and
    with a failure first, no "not ready" line either: --once has no readiness to announce."""
    env = emulator_env(emulator, tmp_path / "out", ENTRA_TOKEND_LOG_FORMAT="json")
    ok = run_cli("run", "--once", "--token", f"a={STORAGE}", "--token", f"b={VAULT}", env=env)
    assert ok.returncode == 0, ok.stderr
    events = [e["event"] for e in _once_events(ok)]
    assert [e for e in events if "ready" in e or "on disk" in e] == ["every token is on disk"]

    emulator.inject(Fault("status", status=503, retry_after="0"))
    retried = run_cli("run", "--once", "--token", f"c={STORAGE}", env=env)
    assert retried.returncode == 0, retried.stderr
    events = [e["event"] for e in _once_events(retried)]
    assert "token refresh failed" in events
    assert [e for e in events if "ready" in e or "on disk" in e] == ["every token is on disk"]
