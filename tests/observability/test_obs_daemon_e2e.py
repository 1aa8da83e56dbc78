"""The real daemon (subprocess) against the emulator, observed only through its HTTP endpoints."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entra_tokend.emulator import Fault
from entra_tokend.metrics import REASONS
from observability.obs_helpers import Reply, free_port, queried_metric_names, request, run_promtool
from testlib import GRAPH, jwt_claims, sample_names, sample_value, wait_until, write_config

# One fault per reason the exchange can produce, consumed in order by successive token requests.
FAULTS_BY_REASON = {
    "throttled": Fault("status", status=429, retry_after="0"),
    "server_error": Fault("status", status=503),
    "invalid_response": Fault("non_json"),
    "network": Fault("reset"),
    "timeout": Fault("hang"),
    "client_error": Fault("status", status=400, aadsts=700016),
}


def _config(tmp_path: Path, port: int) -> Path:
    # Short backoffs and request timeout keep the fault sequence to a few seconds.
    return write_config(
        tmp_path / "entra-tokend.toml",
        {"graph": GRAPH},
        output_dir=tmp_path / "tokens",
        listen=f"127.0.0.1:{port}",
        backoff_initial=0.05,
        backoff_max=0.2,
        config_error_backoff_max=0.2,
        min_refresh_interval=0,
        request_timeout=1.0,
    )


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> Reply | None:
    try:
        return request(port, path, headers=headers)
    except (ConnectionError, http.client.HTTPException):
        return None


def test_daemon_metrics_readiness_and_failure_reasons(
    emulator: Any,
    daemon_factory: Callable[..., Any],
    tmp_path: Path,
    promtool: str,
) -> None:
    emulator.rotate(expired=True)  # kubelet "forgot" to rotate: the daemon cannot start yet
    emulator.inject(*FAULTS_BY_REASON.values())
    port = free_port()
    started = time.time()
    daemon = daemon_factory("run", "--config", str(_config(tmp_path, port)), env=emulator.env())

    # Not ready while the projected token is expired: 503 naming the token.
    reply = wait_until(lambda: _get(port, "/readyz"), 30, what="the daemon's /readyz to answer")
    assert reply.status == 503
    body = json.loads(reply.body)
    assert body["ready"] is False
    assert set(body["tokens"]) == {"graph"}
    health = _get(port, "/healthz")
    assert health is not None
    assert (health.status, health.body) == (200, b"ok\n")

    def unavailable_counted() -> str | None:
        text = _get(port, "/metrics")
        if text is None:
            return None
        scrape = text.body.decode()
        reason = "entra_tokend_token_refresh_failures_total"
        count = sample_value(scrape, reason, token="graph", reason="assertion_unavailable")
        return scrape if count else None

    scrape = wait_until(unavailable_counted, 30, what="an assertion_unavailable failure")
    assert sample_value(scrape, "entra_tokend_ready") == 0
    # Never acquired: 0 ("never"), from start-up.
    assert sample_value(scrape, "entra_tokend_token_expiry_timestamp_seconds", token="graph") == 0

    # kubelet rotates: the daemon retries at once and works through one fault per reason.
    fresh = emulator.rotate()
    wait_until(
        lambda: (r := _get(port, "/readyz")) is not None and r.status == 200,
        30,
        what="readiness to flip to 200",
    )
    reply = request(port, "/readyz")
    assert json.loads(reply.body) == {"ready": True, "tokens": {"graph": "ok"}}
    finished = time.time()

    scrape = request(port, "/metrics").body.decode()
    written = (tmp_path / "tokens" / "graph").read_text()
    exp = jwt_claims(written)["exp"]
    expiry = sample_value(scrape, "entra_tokend_token_expiry_timestamp_seconds", token="graph")
    assert expiry is not None
    # The daemon computes expiry as send time + expires_in; Entra's exp is the whole second of
    # issue + the same lifetime, so they agree to within that second.
    assert exp - 1 < expiry < exp + 1
    assert started + 3600 <= expiry <= finished + 3600
    last = sample_value(scrape, "entra_tokend_token_last_success_timestamp_seconds", token="graph")
    assert last is not None
    assert started <= last <= finished

    _assert_counts(scrape, fresh)
    _assert_exposition(port, scrape, promtool, written)

    assert daemon.stop() == 0
    log = daemon.log_text()
    assert written not in log
    assert fresh not in log
    for event in daemon.events():  # every line is JSON (events() raises otherwise)
        assert {"timestamp", "level", "event"} <= set(event)


def _assert_counts(scrape: str, fresh: str) -> None:
    """One failure per injected reason, one success, the rotation and the exchange timings."""
    failures = {
        reason: sample_value(
            scrape, "entra_tokend_token_refresh_failures_total", token="graph", reason=reason
        )
        for reason in REASONS
    }
    for reason in FAULTS_BY_REASON:
        assert failures[reason] == 1, (reason, failures)
    assert (failures["assertion_unavailable"] or 0) >= 1
    assert failures["write_error"] is None  # created with its first failure
    refreshes = "entra_tokend_token_refreshes_total"
    assert sample_value(scrape, refreshes, token="graph", result="success") == 1
    assert sample_value(scrape, refreshes, token="graph", result="failure") == sum(
        v or 0 for v in failures.values()
    )

    assert sample_value(scrape, "entra_tokend_ready") == 1
    assertion_exp = jwt_claims(fresh)["exp"]
    assert (
        sample_value(scrape, "entra_tokend_assertion_expiry_timestamp_seconds", identity="default")
        == assertion_exp
    )
    assert sample_value(scrape, "entra_tokend_assertion_rotations_total", identity="default") == 1
    # Every exchange attempt that reached the endpoint is timed (assertion failures are not).
    count = sample_value(scrape, "entra_tokend_exchange_duration_seconds_count", identity="default")
    assert count == len(FAULTS_BY_REASON) + 1


def _assert_exposition(port: int, scrape: str, promtool: str, written: str) -> None:
    """What the alerts and dashboard query exists, promtool accepts the scrape, OpenMetrics is
    served without _created series, and no endpoint carries the token."""
    # The shipped alerts and dashboard query only what the real daemon serves; promtool agrees.
    # (The hook counter exists only for tokens with a hook, the endpoint's series only with an
    # [endpoint]; this daemon has neither — tests/endpoint scrapes a daemon with one.)
    not_here = {
        "entra_tokend_hook_failures_total",
        "entra_tokend_endpoint_requests_total",
        "entra_tokend_endpoint_request_duration_seconds_bucket",
    }
    assert sorted(queried_metric_names() - sample_names(scrape) - not_here) == []
    lint = run_promtool(promtool, "check", "metrics", stdin=scrape)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    openmetrics = request(
        port, "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert b"_created" not in openmetrics.body
    # No endpoint ever carries the token.
    for path in ("/metrics", "/readyz", "/healthz"):
        assert written.encode() not in request(port, path).body
