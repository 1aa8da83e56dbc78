"""Projected-token rotations as kubelet performs them, seen by the real daemon."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from entra_tokend.emulator import Emulator, Fault
from entra_tokend.emulator.kubelet import ProjectedVolume
from support import (
    STORAGE,
    VAULT,
    DaemonProcess,
    emulator_env,
    jwt_claims,
    sample_value,
    wait_until,
    write_config,
)

# Backoff of at least 60 s (a tenth of 600 s): a recovery sooner than that came from the
# rotation, and the 20 s deadlines below still leave a loaded machine plenty of time.
SLOW_BACKOFF: dict[str, Any] = {
    "backoff_initial": 600,
    "backoff_max": 600,
    "config_error_backoff_max": 600,
}


def start(
    emulator: Emulator,
    tmp_path: Path,
    daemon_factory: Any,
    tokens: dict[str, str],
    *,
    token_file: Path | None = None,
    listen: str = "",
) -> DaemonProcess:
    config = write_config(tmp_path / "c.toml", tokens, **SLOW_BACKOFF)
    env = emulator_env(emulator, tmp_path / "out", ENTRA_TOKEND_LISTEN=listen)
    if token_file is not None:
        env["AZURE_FEDERATED_TOKEN_FILE"] = str(token_file)
    daemon: DaemonProcess = daemon_factory("run", "--config", str(config), env=env)
    return daemon


def test_rotation_fixes_a_failing_token_without_waiting_out_the_backoff(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    emulator.reject_current_assertion_as_expired()
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE, "b": VAULT})
    failure = d.wait_event("token refresh failed", token="a", aadsts=700024)
    assert failure["retry_in"] >= 60
    assert "kubelet" in failure["hint"]
    new = emulator.rotate()
    d.wait_event("projected token rotated")
    d.wait_event("token recovered", token="a", timeout=20)
    d.wait_event("token recovered", token="b", timeout=20)
    assert emulator.token_requests()[-1].form["client_assertion"] == new
    assert (tmp_path / "out" / "a").read_text() in emulator.issued_tokens
    assert d.stop() == 0


def test_rotation_during_an_in_flight_exchange_retries_at_once(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    emulator.reject_current_assertion_as_expired()
    # The first request is slow; the rotation lands while it is in flight.
    emulator.inject(Fault("delay", delay=1.0))
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE})
    emulator.wait_for_requests(1, timeout=10)
    new = emulator.rotate()
    d.wait_event("projected token rotated")
    d.wait_event("token refresh failed", token="a", aadsts=700024)
    d.wait_event("token recovered", token="a", timeout=20)
    reqs = emulator.token_requests()
    assert len(reqs) == 2
    assert reqs[1].form["client_assertion"] == new


def test_healthy_tokens_keep_their_schedule_on_rotation(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    # The first token request is refused as if its assertion had expired (whether a or b sends
    # it first is up to the daemon): that token fails, the other is healthy. Rotations must
    # retry the failing token, and only it.
    emulator.inject(Fault("status", status=400, aadsts=700024))
    scopes = {"a": STORAGE, "b": VAULT}
    d = start(emulator, tmp_path, daemon_factory, scopes)
    failing = d.wait_event("token refresh failed", aadsts=700024)["token"]
    healthy = "b" if failing == "a" else "a"
    d.wait_event("token written", token=healthy)
    # The failing token's retry is answered a second late, and both rotations land while it is
    # in flight: a refresh of the healthy token started by either rotation, even some hundreds
    # of milliseconds later, reaches the emulator before the retry's answer, the event after
    # which the requests are counted.
    emulator.inject(Fault("delay", delay=1.0))
    emulator.rotate()
    d.wait_event("projected token rotated")
    emulator.wait_for_requests(3, timeout=10)  # the two first requests, then the retry
    emulator.rotate()
    wait_until(lambda: d.count("projected token rotated") == 2)
    d.wait_event("token recovered", token=failing, timeout=20)
    assert [r.form["scope"] for r in emulator.token_requests()].count(scopes[healthy]) == 1
    assert d.stop() == 0


def test_many_rotations_in_a_row(emulator: Emulator, tmp_path: Path, daemon_factory: Any) -> None:
    emulator.reject_current_assertion_as_expired()
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE}, listen="127.0.0.1:0")
    d.wait_event("token refresh failed", token="a", aadsts=700024)
    # Each assertion expires a second after the one before, so the daemon's assertion expiry
    # metric tells which one it holds.
    assertions = [emulator.rotate(ttl=3600 + i) for i in range(30)]
    d.wait_event("token recovered", token="a", timeout=20)
    # However the watcher coalesced the burst, the daemon ends on the last assertion.
    last_exp = jwt_claims(assertions[-1])["exp"]
    wait_until(
        lambda: (
            sample_value(
                d.scrape(), "entra_tokend_assertion_expiry_timestamp_seconds", identity="default"
            )
            == last_exp
        ),
        what="the assertion expiry metric to name the last assertion",
    )
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_directory_replaced_wholesale(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    emulator.reject_current_assertion_as_expired()
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE})
    d.wait_event("token refresh failed", token="a", aadsts=700024)
    directory = emulator.token_file.parent
    shutil.rmtree(directory)
    ProjectedVolume(directory).write(emulator.issue_assertion())
    d.wait_event("token recovered", token="a", timeout=20)
    assert d.stop() == 0


def test_missing_token_file_appears_later(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    volume = ProjectedVolume(tmp_path / "not-mounted-yet" / "azure")
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE}, token_file=volume.path)
    event = d.wait_event("projected token unavailable", problem="missing")
    assert str(volume.path) in event["detail"]
    assert len(emulator.token_requests()) == 0
    volume.write(emulator.issue_assertion())
    d.wait_event("token recovered", token="a", timeout=20)
    # logged once per change of state, not once per attempt
    assert d.count("projected token unavailable") == 1
    assert d.stop() == 0


def test_garbage_then_a_valid_token(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    volume = ProjectedVolume(tmp_path / "sa")
    volume.write("this is not a jwt\n")
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE}, token_file=volume.path)
    d.wait_event("projected token unavailable", problem="malformed")
    assert len(emulator.token_requests()) == 0
    volume.write(emulator.issue_assertion())
    d.wait_event("token recovered", token="a", timeout=20)
    assert d.stop() == 0


def test_expired_only_assertion_is_never_sent(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    emulator.rotate(expired=True)
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE})
    event = d.wait_event("projected token unavailable", problem="expired")
    assert "is kubelet refreshing it?" in event["detail"]
    d.wait_event("token refresh failed", token="a", reason="assertion_unavailable")
    assert len(emulator.token_requests()) == 0
    emulator.rotate()
    d.wait_event("token recovered", token="a", timeout=20)
    assert len(emulator.token_requests()) == 1
    assert d.stop() == 0


def test_once_waits_for_the_token_file_up_to_its_deadline(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    volume = ProjectedVolume(tmp_path / "later")
    config = write_config(tmp_path / "c.toml", {"a": STORAGE})
    env = emulator_env(emulator, tmp_path / "out", AZURE_FEDERATED_TOKEN_FILE=str(volume.path))
    d = daemon_factory("run", "--once", "--deadline", "30", "--config", str(config), env=env)
    d.wait_event("projected token unavailable", problem="missing")
    volume.write(emulator.issue_assertion())
    assert d.proc.wait(30) == 0
    assert (tmp_path / "out" / "a").read_text() == emulator.issued_tokens[-1]
