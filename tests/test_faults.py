"""Fault tolerance end to end: the daemon survives every fault, keeps the good file, recovers."""

from __future__ import annotations

import hashlib
import itertools
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator, Fault
from support import (
    STORAGE,
    VAULT,
    base_env,
    cli,
    emulator_env,
    output_files,
    wait_until,
    write_config,
)

# Fast retries, no refresh floor, no HTTP port (settings for write_config).
FAST: dict[str, Any] = {
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "min_refresh_interval": 0,
    "request_timeout": 1.0,
    "listen": "",
}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault("status", status=503, count=1000), "server_error"),
        (Fault("status", status=429, retry_after="1", count=1000), "throttled"),
        (Fault("reset", count=1000), "network"),
        (Fault("html", status=200, count=1000), "invalid_response"),
        (Fault("no_access_token", count=1000), "invalid_response"),
        (Fault("hang", delay=5, count=1000), "timeout"),
        (Fault("status", status=400, aadsts=700024, count=1000), "client_error"),
    ],
    ids=["5xx", "429", "reset", "html", "no_access_token", "hang", "aadsts700024"],
)
def test_fault_keeps_good_file_and_recovers(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any, fault: Fault, reason: str
) -> None:
    out = tmp_path / "out"
    emulator.access_token_lifetime = 2
    config = write_config(tmp_path / "c.toml", {"a": STORAGE}, **FAST)
    d = daemon_factory("run", "--config", str(config), env=emulator_env(emulator, out))
    d.wait_event("token written", token="a")
    before = len(emulator.token_requests())
    emulator.inject(fault)  # every request fails from now until clear_faults()
    failure = d.wait_event("token refresh failed", timeout=15, token="a", reason=reason)
    assert failure["request_id"]
    wait_until(lambda: len(emulator.token_requests()) >= before + 2, timeout=15)
    # Failed refreshes never touch the file: it still holds the last token Entra issued.
    # (Compared by digest so that a failure does not print tokens.)
    assert digest((out / "a").read_bytes()) == digest(emulator.issued_tokens[-1].encode())
    assert d.proc.poll() is None
    emulator.clear_faults()
    recovered = d.wait_event("token recovered", timeout=20, token="a")
    assert (
        recovered["request_id"] == emulator.token_requests()[-1].headers["x-ms-client-request-id"]
    )
    wait_until(
        lambda: digest((out / "a").read_bytes()) == digest(emulator.issued_tokens[-1].encode())
    )
    if fault.retry_after:
        # Retry-After is never undercut: each retry came at least that long after a 429
        reqs = emulator.token_requests()
        gaps = [b.time - a.time for a, b in itertools.pairwise(reqs) if a.status == 429]
        assert gaps
        assert min(gaps) >= float(fault.retry_after)
    assert d.stop() == 0
    assert output_files(out) == ["a"]


def test_expired_token_file_stays_while_refresh_keeps_failing(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    emulator.access_token_lifetime = 1
    config = write_config(tmp_path / "c.toml", {"a": STORAGE}, **FAST)
    d = daemon_factory("run", "--config", str(config), env=emulator_env(emulator, out))
    d.wait_event("token written", token="a")
    emulator.inject(Fault("status", status=500, count=100_000))
    # after expiry the failures keep coming and the file stays (a clear 401 beats ENOENT)
    wait_until(lambda: d.count("token refresh failed", token="a") >= 1, timeout=10)
    wait_until(lambda: len(emulator.token_requests()) >= 12, timeout=20)
    last_good = emulator.issued_tokens[-1].encode()
    assert digest((out / "a").read_bytes()) == digest(last_good)
    assert d.proc.poll() is None
    not_ready = d.wait_event("not ready: a token is missing or expired")
    assert not_ready["tokens"] == {"a": "expired"}
    emulator.clear_faults()
    d.wait_event("token recovered", timeout=20, token="a")
    assert d.stop() == 0


def test_configuration_error_backs_off_longer_and_explains_federation(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", {"a": STORAGE}, **FAST)
    emulator.inject(Fault("status", status=400, aadsts=700213, count=100))
    d = daemon_factory("run", "--config", str(config), env=emulator_env(emulator, out))
    failure = d.wait_event("token refresh failed", token="a", aadsts=700213)
    assert failure["level"] == "error"
    assert failure["retry_in"] >= 0.2  # beyond the transient cap: configuration backoff
    assert failure["assertion_claims"]["sub"] == "system:serviceaccount:default:workload"
    assert failure["assertion_claims"]["aud"] == ["api://AzureADTokenExchange"]
    assert "issuer, subject and audience" in failure["hint"]
    assert d.stop() == 0


def test_one_identity_failing_does_not_affect_another(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    other = tmp_path / "missing-token"  # this identity's projected token never appears
    extra = (
        f'[identity.other]\ntenant_id = "{emulator.tenant_id}"\n'
        f'client_id = "{emulator.client_id}"\ntoken_file = "{other}"\n'
        f'authority_host = "{emulator.authority_host}"\n'
        f'[token.b]\nscope = "{VAULT}"\nidentity = "other"\n'
    )
    config = write_config(tmp_path / "c.toml", {"a": STORAGE}, body=extra, **FAST)
    d = daemon_factory("run", "--config", str(config), env=emulator_env(emulator, out))
    d.wait_event("token written", token="a")
    failure = d.wait_event("token refresh failed", token="b", reason="assertion_unavailable")
    assert "does not exist" in failure["detail"]
    assert d.count("projected token unavailable", identity="other") == 1
    # the file appears: picked up promptly, without a restart
    other.write_text(emulator.token_file.read_text())
    d.wait_event("token recovered", token="b", timeout=10)
    assert d.stop() == 0


def test_sighup_reload_adds_removes_and_keeps(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", {"a": STORAGE, "b": VAULT}, **FAST)
    d = daemon_factory("run", "--config", str(config), env=emulator_env(emulator, out))
    d.wait_event("ready: every token is on disk")
    a_before = (out / "a").read_bytes()
    write_config(
        config,
        {"a": STORAGE, "c": "https://graph.microsoft.com/.default"},
        body='[token.d]\nscope = "https://d.example/.default"\npath = "sub/dir/d"\n',
        **FAST,
    )
    d.signal(signal.SIGHUP)
    reloaded = d.wait_event("configuration reloaded")
    assert reloaded["added"] == ["c", "d"]
    assert reloaded["removed"] == ["b"]
    wait_until((out / "c").exists)
    wait_until((out / "sub" / "dir" / "d").exists)  # a new subdirectory is created
    assert (out / "b").exists()  # removed tokens' files are left in place
    assert (out / "a").read_bytes() == a_before  # unchanged token kept its schedule
    assert sum(1 for r in emulator.token_requests() if r.form["scope"] == STORAGE) == 1
    # a bad new configuration is rejected and the running one kept
    config.write_text('[token.a]\nscop = "x"\n')
    d.signal(signal.SIGHUP)
    rejected = d.wait_event("configuration reload rejected")
    assert "unknown key 'scop'" in rejected["problem"]
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_reload_that_removes_the_failing_token_makes_the_daemon_ready(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "never-there"
    other = (
        f'[identity.other]\ntenant_id = "{emulator.tenant_id}"\n'
        f'client_id = "{emulator.client_id}"\ntoken_file = "{missing}"\n'
        f'authority_host = "{emulator.authority_host}"\n'
        f'[token.b]\nscope = "{VAULT}"\nidentity = "other"\n'
    )
    config = write_config(tmp_path / "c.toml", {"a": STORAGE}, body=other, **FAST)
    d = daemon_factory("run", "--config", str(config), env=emulator_env(emulator, out))
    d.wait_event("token written", token="a")
    d.wait_event("token refresh failed", token="b", reason="assertion_unavailable")
    assert d.count("ready: every token is on disk") == 0
    # a's format changes (its runner is replaced and re-acquired); b goes away
    write_config(config, body=f'[token.a]\nscope = "{STORAGE}"\nformat = "json"\n', **FAST)
    d.signal(signal.SIGHUP)
    d.wait_event("configuration reloaded", removed=["b"])
    d.wait_event("ready: every token is on disk")
    wait_until(lambda: (out / "a").read_text().startswith("{"))
    assert d.stop() == 0


def test_a_broken_log_pipe_never_stops_the_refreshes(emulator: Emulator, tmp_path: Path) -> None:
    """Whatever reads stderr dies (every log write is EPIPE): tokens are still refreshed, and
    a SIGTERM still ends in a clean exit (the lock file removed)."""
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
