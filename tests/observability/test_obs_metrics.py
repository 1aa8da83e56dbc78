"""Metrics semantics, read back from a live scrape over HTTP."""

from __future__ import annotations

import pytest

import entra_tokend
from entra_tokend.exposition import registry
from entra_tokend.metrics import EXCHANGE_BUCKETS, REASONS, Metrics
from entra_tokend.model import Reason
from observability.obs_helpers import LiveServer, populate, run_promtool
from testlib import sample_names, samples
from testlib import sample_value as _value


def test_promtool_check_metrics_is_clean_on_a_live_scrape(live: LiveServer, promtool: str) -> None:
    populate(live.metrics)
    body = live.scrape()
    result = run_promtool(promtool, "check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


def test_promtool_check_metrics_catches_a_bad_metric(promtool: str) -> None:
    # The check above is only meaningful if promtool really judges the text it is given.
    bad = "# HELP x_seconds_total A counter.\n# TYPE x_seconds_total gauge\nx_seconds_total 1\n"
    result = run_promtool(promtool, "check", "metrics", stdin=bad)
    assert result.returncode != 0
    assert "should not have" in result.stdout + result.stderr


def test_build_info_and_ready_exist_from_the_start(live: LiveServer) -> None:
    body = live.scrape()
    assert _value(body, "entra_tokend_build_info", version=entra_tokend.__version__) == 1
    assert _value(body, "entra_tokend_ready") == 0


def test_configured_token_has_zero_series_the_alerts_read(live: LiveServer) -> None:
    live.metrics.token_configured("graph", "wi")
    live.metrics.token_configured("blob", "wi", hook=True)
    body = live.scrape()
    for token in ("graph", "blob"):
        for result in ("success", "failure"):
            assert (
                _value(body, "entra_tokend_token_refreshes_total", token=token, result=result) == 0
            )
    # Per-reason series appear with their first failure; no alert rule reads them.
    for reason in REASONS:
        assert (
            _value(body, "entra_tokend_token_refresh_failures_total", token="graph", reason=reason)
            is None
        )
    # EntraTokendHookFailing takes increase() of the hook counter: it exists at 0 for a token
    # with a hook, and not at all for one without.
    assert _value(body, "entra_tokend_hook_failures_total", token="blob") == 0
    assert _value(body, "entra_tokend_hook_failures_total", token="graph") is None
    live.metrics.refresh_failed("graph", Reason.THROTTLED)
    body = live.scrape()
    assert (
        _value(body, "entra_tokend_token_refresh_failures_total", token="graph", reason="throttled")
        == 1
    )
    assert (
        _value(body, "entra_tokend_token_refresh_failures_total", token="graph", reason="network")
        is None
    )
    assert _value(body, "entra_tokend_assertion_rotations_total", identity="wi") == 0
    assert _value(body, "entra_tokend_exchange_duration_seconds_count", identity="wi") == 0
    # Before the first success both timestamps are 0, which means "never" (README): the series
    # exist from start-up, and the expiry alert fires for a token that never arrived.
    assert _value(body, "entra_tokend_token_expiry_timestamp_seconds", token="graph") == 0
    assert _value(body, "entra_tokend_token_last_success_timestamp_seconds", token="graph") == 0


def test_token_written_sets_expiry_and_counts_success(live: LiveServer) -> None:
    m = live.metrics
    m.token_configured("graph", "default")
    m.token_written("graph", expires_on=1_750_003_600.0, now=1_750_000_000.0)
    m.token_written("graph", expires_on=1_750_005_400.0, now=1_750_001_800.0)
    body = live.scrape()
    assert _value(body, "entra_tokend_token_expiry_timestamp_seconds", token="graph") == (
        1_750_005_400.0
    )
    assert _value(body, "entra_tokend_token_last_success_timestamp_seconds", token="graph") == (
        1_750_001_800.0
    )
    assert _value(body, "entra_tokend_token_refreshes_total", token="graph", result="success") == 2
    assert _value(body, "entra_tokend_token_refreshes_total", token="graph", result="failure") == 0


def test_refresh_failed_counts_by_reason(live: LiveServer) -> None:
    m = live.metrics
    m.token_configured("graph", "default")
    m.refresh_failed("graph", Reason.THROTTLED)
    m.refresh_failed("graph", Reason.THROTTLED)
    m.refresh_failed("graph", Reason.WRITE_ERROR)
    body = live.scrape()
    refreshes = "entra_tokend_token_refreshes_total"
    failures = "entra_tokend_token_refresh_failures_total"
    assert _value(body, refreshes, token="graph", result="failure") == 3
    assert _value(body, failures, token="graph", reason="throttled") == 2
    assert _value(body, failures, token="graph", reason="write_error") == 1
    assert _value(body, failures, token="graph", reason="network") is None  # none yet


def test_unknown_reason_is_rejected() -> None:
    m = Metrics()
    m.token_configured("graph", "default")
    with pytest.raises(ValueError, match="is not a valid Reason"):
        m.refresh_failed("graph", "AADSTS700016: application not found")  # type: ignore[arg-type]


def test_exchange_histogram_buckets(live: LiveServer) -> None:
    live.metrics.exchange_observed("default", 0.2)
    live.metrics.exchange_observed("default", 45.0)
    body = live.scrape()
    name = "entra_tokend_exchange_duration_seconds_bucket"
    les = sorted(float(dict(labels)["le"]) for (n, labels) in samples(body) if n == name)
    assert les[:-1] == list(EXCHANGE_BUCKETS)
    assert min(EXCHANGE_BUCKETS) <= 0.01
    assert max(EXCHANGE_BUCKETS) >= 30
    assert _value(body, name, identity="default", le="0.25") == 1
    assert _value(body, name, identity="default", le="30.0") == 1
    assert _value(body, name, identity="default", le="+Inf") == 2
    assert _value(body, "entra_tokend_exchange_duration_seconds_sum", identity="default") == 45.2


def test_assertion_expiry_and_rotations(live: LiveServer) -> None:
    m = live.metrics
    m.assertion_loaded("default", 1_750_003_600.0)
    m.assertion_rotated("default")
    m.assertion_rotated("default")
    body = live.scrape()
    assert _value(body, "entra_tokend_assertion_expiry_timestamp_seconds", identity="default") == (
        1_750_003_600.0
    )
    assert _value(body, "entra_tokend_assertion_rotations_total", identity="default") == 2

    m.assertion_loaded("default", None)  # a projected token without exp
    body = live.scrape()
    assert _value(body, "entra_tokend_assertion_expiry_timestamp_seconds", identity="default") is (
        None
    )
    assert _value(body, "entra_tokend_assertion_rotations_total", identity="default") == 2


def test_hook_failures_and_ready(live: LiveServer) -> None:
    live.metrics.token_configured("graph", "default", hook=True)
    live.metrics.hook_failed("graph")
    live.metrics.set_ready(True)
    body = live.scrape()
    assert _value(body, "entra_tokend_hook_failures_total", token="graph") == 1
    assert _value(body, "entra_tokend_ready") == 1
    live.metrics.set_ready(False)
    assert _value(live.scrape(), "entra_tokend_ready") == 0


def test_token_removed_drops_its_series_and_orphaned_identity(live: LiveServer) -> None:
    populate(live.metrics)  # graph and storage, both on identity "default"
    live.metrics.token_configured("blob", "other")
    live.metrics.assertion_loaded("other", 1_750_003_600.0)

    live.metrics.token_removed("graph")
    live.metrics.token_removed("blob")
    body = live.scrape()
    tokens = {dict(labels).get("token") for (_, labels) in samples(body)} - {None}
    identities = {dict(labels).get("identity") for (_, labels) in samples(body)} - {None}
    assert tokens == {"storage"}
    assert identities == {"default"}  # still used by storage
    assert "entra_tokend_build_info" in sample_names(body)

    live.metrics.token_removed("storage")
    live.metrics.token_removed("storage")  # idempotent
    body = live.scrape()
    assert all(
        "token" not in dict(labels) and "identity" not in dict(labels)
        for (_, labels) in samples(body)
    )


def test_metrics_instances_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.token_configured("graph", "default")
    assert (
        registry(b).get_sample_value(
            "entra_tokend_token_refreshes_total", {"token": "graph", "result": "success"}
        )
        is None
    )
    assert (
        registry(a).get_sample_value(
            "entra_tokend_token_refreshes_total", {"token": "graph", "result": "success"}
        )
        == 0
    )


def test_token_adopted_sets_expiry_without_counting_a_refresh(live: LiveServer) -> None:
    live.metrics.token_configured("graph", "default")
    live.metrics.token_adopted("graph", 1_750_003_600.0)
    body = live.scrape()
    assert _value(body, "entra_tokend_token_expiry_timestamp_seconds", token="graph") == (
        1_750_003_600.0
    )
    assert _value(body, "entra_tokend_token_refreshes_total", token="graph", result="success") == 0
    assert _value(body, "entra_tokend_token_last_success_timestamp_seconds", token="graph") == 0


def test_token_moving_to_another_identity_drops_the_orphaned_identity(live: LiveServer) -> None:
    live.metrics.token_configured("graph", "old")
    live.metrics.assertion_loaded("old", 1_750_003_600.0)
    live.metrics.token_configured("graph", "new")  # SIGHUP reload changed the token's identity
    identities = {dict(labels).get("identity") for (_, labels) in samples(live.scrape())} - {None}
    assert identities == {"new"}
