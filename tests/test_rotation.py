"""Projected-token rotations as kubelet performs them, seen by the real daemon."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from entra_tokend.emulator import Emulator, Fault
from entra_tokend.emulator.kubelet import ProjectedVolume
from testlib import wait_until

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
# Backoff of at least 60 s (a tenth of 600 s): a recovery sooner than that came from the
# rotation, and the 20 s deadlines below still leave a loaded machine plenty of time.
SLOW_BACKOFF = (
    "backoff_initial = 600\nbackoff_max = 600\nconfig_error_backoff_max = 600\nlisten = ''\n"
)


def start(
    emulator: Emulator,
    tmp_path: Path,
    daemon_factory: Any,
    tokens: dict[str, str],
    *,
    extra: str = SLOW_BACKOFF,
    token_file: Path | None = None,
) -> Any:
    config = tmp_path / "c.toml"
    config.write_text(extra + "".join(f'[token.{n}]\nscope = "{s}"\n' for n, s in tokens.items()))
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    if token_file is not None:
        env["AZURE_FEDERATED_TOKEN_FILE"] = str(token_file)
    return daemon_factory("run", "--config", str(config), env=env)


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
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE})
    d.wait_event("token written", token="a")
    emulator.rotate()
    d.wait_event("projected token rotated")
    emulator.rotate()
    wait_until(lambda: d.count("projected token rotated") == 2)
    assert len(emulator.token_requests()) == 1
    assert d.stop() == 0


def test_many_rotations_in_a_row(emulator: Emulator, tmp_path: Path, daemon_factory: Any) -> None:
    emulator.reject_current_assertion_as_expired()
    d = start(emulator, tmp_path, daemon_factory, {"a": STORAGE})
    d.wait_event("token refresh failed", token="a", aadsts=700024)
    last = ""
    for _ in range(30):
        last = emulator.rotate()
    d.wait_event("token recovered", token="a", timeout=20)
    wait_until(
        lambda: (
            emulator.token_requests()[-1].form["client_assertion"] == last
            or d.count("projected token rotated") >= 1
        )
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
    config = tmp_path / "c.toml"
    config.write_text(f'[token.a]\nscope = "{STORAGE}"\n')
    env = {
        **emulator.env(),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
        "AZURE_FEDERATED_TOKEN_FILE": str(volume.path),
    }
    d = daemon_factory("run", "--once", "--deadline", "30", "--config", str(config), env=env)
    d.wait_event("projected token unavailable", problem="missing")
    volume.write(emulator.issue_assertion())
    assert d.proc.wait(30) == 0
    assert (tmp_path / "out" / "a").read_text() == emulator.issued_tokens[-1]
