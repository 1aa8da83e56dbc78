"""Prometheus metrics for entra-tokend.

Every metric lives in the daemon's own :class:`CollectorRegistry`, so nothing from the
process-global default registry (Python GC, process stats) leaks into the scrape and tests can
build as many independent instances as they like.

Label values are bounded by construction: ``token`` and ``identity`` are configured names,
``result`` is ``success``/``failure`` and ``reason`` is one of :data:`REASONS`. Nothing derived
from a token, an assertion, a scope or an Entra response is ever used as a label.
"""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import entra_tokend
from entra_tokend.model import Reason

# `_created` series double the series count and mean nothing to the alerts; the switch is
# process-wide in prometheus_client, which is what a single-purpose daemon wants anyway.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REASONS: tuple[str, ...] = tuple(str(reason) for reason in Reason)
"""The fixed set of refresh failure reasons (the ``reason`` label)."""

RESULTS: tuple[str, ...] = ("success", "failure")

ENDPOINT_RESULTS: tuple[str, ...] = ("ok", "unauthorized", "forbidden", "bad_request", "error")
"""The ``result`` label of endpoint requests."""
OTHER_RESOURCE = "other"
"""The ``resource`` label of a request for a resource outside the allow list."""
# A cached token is served in well under a millisecond; a first request waits for Entra.
ENDPOINT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
)

# Entra usually answers in 50-500 ms; the tail covers retries inside httpx and slow networks up
# to the request timeout.
EXCHANGE_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _TokenSeries:
    """One token's per-token values. prometheus_client keeps a child object (a value and a
    lock each) per label set: 4-5 of them per token were ~2.1 KiB of the memory per token
    (bench/FINDINGS.md, issue 18); one slotted record is ~0.2 KiB."""

    __slots__ = (
        "expiry",
        "failures",
        "hook_failures",
        "last_success",
        "refresh_failures",
        "successes",
    )

    def __init__(self, hook: bool) -> None:
        self.expiry = 0.0  # unix seconds; 0: no token on disk yet
        self.last_success = 0.0  # unix seconds; 0: never
        self.successes = 0.0
        self.refresh_failures = 0.0
        # reason -> count; None until the first failure (series appear with it).
        self.failures: dict[str, float] | None = None
        self.hook_failures: float | None = 0.0 if hook else None  # None: no hook, no series


class _TokenCollector(Collector):
    """Yields the per-token families from the ``_TokenSeries`` records, in the exposition
    prometheus_client's Gauge and Counter would give (same names, help, labels and values).

    ``collect`` runs in the scrape's worker thread while the event loop updates records: it
    works on a copy of the dict (one C call under the GIL), so it never sees the dict change
    size; a value read mid-update is at most one event old, as with prometheus_client's own.
    """

    def __init__(self, series: dict[str, _TokenSeries], *, hooks: bool) -> None:
        self._series = series
        self._hooks = hooks  # this instance yields hook_failures (else the four others)

    def describe(self) -> Iterator[Metric]:
        """The families without samples (for the registry's duplicate-name check)."""
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        """The families with one sample per configured token (per reason for failures)."""
        return self._families(self._series.copy())

    def _families(self, series: dict[str, _TokenSeries]) -> Iterator[Metric]:
        if self._hooks:
            hooks = CounterMetricFamily(
                "entra_tokend_hook_failures",
                "Post-write hooks that failed or timed out.",
                labels=["token"],
            )
            for token, s in series.items():
                if s.hook_failures is not None:
                    hooks.add_metric([token], s.hook_failures)
            yield hooks
            return
        expiry = GaugeMetricFamily(
            "entra_tokend_token_expiry_timestamp_seconds",
            "Expiry of the access token currently on disk, as a unix timestamp; 0: none yet.",
            labels=["token"],
        )
        last = GaugeMetricFamily(
            "entra_tokend_token_last_success_timestamp_seconds",
            "Time of the last successful refresh (token exchanged and written), unix seconds; "
            "0: never.",
            labels=["token"],
        )
        refreshes = CounterMetricFamily(
            "entra_tokend_token_refreshes",
            "Refresh attempts by result (success or failure).",
            labels=["token", "result"],
        )
        failures = CounterMetricFamily(
            "entra_tokend_token_refresh_failures",
            "Failed refresh attempts by reason.",
            labels=["token", "reason"],
        )
        for token, s in series.items():
            expiry.add_metric([token], s.expiry)
            last.add_metric([token], s.last_success)
            refreshes.add_metric([token, "success"], s.successes)
            refreshes.add_metric([token, "failure"], s.refresh_failures)
            by_reason = s.failures
            if by_reason is not None:
                for reason, count in by_reason.copy().items():
                    failures.add_metric([token, reason], count)
        yield expiry
        yield last
        yield refreshes
        yield failures


class Metrics:
    """The daemon's metrics, updated by the scheduler and exposed by :mod:`entra_tokend.server`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # token -> its per-token values, exposed by two collectors registered where the
        # Gauge/Counter objects they replace were, so the exposition keeps its order.
        self._series: dict[str, _TokenSeries] = {}
        r.register(_TokenCollector(self._series, hooks=False))
        self._exchange_duration = Histogram(
            "entra_tokend_exchange_duration_seconds",
            "Latency of token requests to the Entra token endpoint.",
            ["identity"],
            buckets=EXCHANGE_BUCKETS,
            registry=r,
        )
        self._assertion_expiry = Gauge(
            "entra_tokend_assertion_expiry_timestamp_seconds",
            "Expiry (exp claim) of the projected service-account token, unix seconds.",
            ["identity"],
            registry=r,
        )
        self._assertion_rotations = Counter(
            "entra_tokend_assertion_rotations",
            "Times the projected service-account token was seen to change.",
            ["identity"],
            registry=r,
        )
        r.register(_TokenCollector(self._series, hooks=True))
        self._ready = Gauge(
            "entra_tokend_ready",
            "1 when every configured token is on disk and unexpired, else 0.",
            registry=r,
        )
        self._output_dir_world_writable = Gauge(
            "entra_tokend_output_dir_world_writable",
            "1 when output_dir is world-writable without the sticky bit (e.g. an emptyDir with "
            "fsGroup); tokens are still written safely, but others can delete them.",
            registry=r,
        )
        self._build_info = Gauge(
            "entra_tokend_build_info",
            "Always 1; the version label names the running entra-tokend.",
            ["version"],
            registry=r,
        )
        self._endpoint_requests = Counter(
            "entra_tokend_endpoint_requests",
            "Managed-identity endpoint requests by result and allowed resource.",
            ["result", "resource"],
            registry=r,
        )
        self._endpoint_duration = Histogram(
            "entra_tokend_endpoint_request_duration_seconds",
            "Latency of managed-identity endpoint requests (time in the handler).",
            ["result"],
            buckets=ENDPOINT_BUCKETS,
            registry=r,
        )
        self._endpoint_resources: set[str] = set()
        self._build_info.labels(version=entra_tokend.__version__).set(1)
        self._ready.set(0)
        # token -> identity, so an identity's series go away with its last token.
        self._tokens: dict[str, str] = {}

    def token_configured(self, token: str, identity: str, *, hook: bool = False) -> None:
        """Create the series the alerts read at zero, so rates and alerts work from the first
        scrape: ``token_refreshes_total`` for both results (EntraTokendRefreshFailing), the
        identity's histogram and rotation counter, and ``hook_failures_total`` when the token
        has a hook (EntraTokendHookFailing). Per-reason failure series appear with the first
        failure of that reason: 8 zero series per token were most of the exposition and of the
        memory per token (bench/FINDINGS.md, issue 18), and no rule reads them."""
        previous = self._tokens.get(token)
        self._tokens[token] = identity
        if previous is not None and previous != identity:
            self._drop_identity_if_unused(previous)
        # 0 means "never" (README): no token on disk yet, no successful refresh yet. A token
        # configured again (reload) keeps its values.
        series = self._series.get(token)
        if series is None:
            self._series[token] = _TokenSeries(hook)
        elif not hook:
            series.hook_failures = None
        elif series.hook_failures is None:
            series.hook_failures = 0.0
        self._exchange_duration.labels(identity=identity)
        self._assertion_rotations.labels(identity=identity)

    def token_removed(self, token: str) -> None:
        """Drop every series of *token*; drop its identity's series if no token uses it now."""
        identity = self._tokens.pop(token, None)
        self._series.pop(token, None)
        if identity is not None:
            self._drop_identity_if_unused(identity)

    def _record(self, token: str) -> _TokenSeries:
        # Configured tokens have one; an update for another creates it, as labels() would.
        series = self._series.get(token)
        if series is None:
            series = self._series[token] = _TokenSeries(hook=False)
        return series

    def _drop_identity_if_unused(self, identity: str) -> None:
        if identity not in self._tokens.values():
            _remove(self._exchange_duration, identity)
            _remove(self._assertion_expiry, identity)
            _remove(self._assertion_rotations, identity)

    def token_adopted(self, token: str, expires_on: float) -> None:
        """Record a still-valid token found on disk at start or reload (no refresh counted)."""
        self._record(token).expiry = expires_on

    def token_written(self, token: str, expires_on: float, now: float) -> None:
        """Record a successful refresh: the new token with expiry *expires_on* is on disk."""
        series = self._record(token)
        series.expiry = expires_on
        series.last_success = now
        series.successes += 1

    def refresh_failed(self, token: str, reason: Reason) -> None:
        """Record a failed refresh of *token* for *reason*.

        Raises ValueError for a value outside ``Reason``: a free-form label would be unbounded.
        """
        label = Reason(reason).value
        series = self._record(token)
        series.refresh_failures += 1
        if series.failures is None:
            series.failures = {}
        series.failures[label] = series.failures.get(label, 0.0) + 1

    def exchange_observed(self, identity: str, seconds: float) -> None:
        """Record the latency of one token request (successful or not)."""
        self._exchange_duration.labels(identity=identity).observe(seconds)

    def assertion_loaded(self, identity: str, expires_on: float | None) -> None:
        """Record the expiry of the projected token just read; ``None`` when it has no exp."""
        self._assertion_rotations.labels(identity=identity)
        if expires_on is None:
            # A stale value would keep the staleness alert firing (or silent) on old data.
            _remove(self._assertion_expiry, identity)
        else:
            self._assertion_expiry.labels(identity=identity).set(expires_on)

    def assertion_rotated(self, identity: str) -> None:
        """Count a change of the projected token seen by the watcher."""
        self._assertion_rotations.labels(identity=identity).inc()

    def hook_failed(self, token: str) -> None:
        """Count a failed post-write hook of *token*."""
        series = self._record(token)
        series.hook_failures = (series.hook_failures or 0.0) + 1

    def set_output_dir_world_writable(self, insecure: bool) -> None:
        """Set ``entra_tokend_output_dir_world_writable`` to 1 or 0."""
        self._output_dir_world_writable.set(1 if insecure else 0)

    def endpoint_configured(self, resources: list[str]) -> None:
        """Create the endpoint's series at zero for each allowed resource (and ``other``)."""
        self._endpoint_resources = {*resources, OTHER_RESOURCE}
        for result in ENDPOINT_RESULTS:
            self._endpoint_duration.labels(result=result)
            for resource in self._endpoint_resources:
                self._endpoint_requests.labels(result=result, resource=resource)

    def endpoint_request(self, result: str, resource: str, seconds: float) -> None:
        """Count one endpoint request. ``resource`` outside the configured set counts as
        ``other`` and an unknown ``result`` raises ValueError (labels stay bounded)."""
        if result not in ENDPOINT_RESULTS:
            raise ValueError(f"unknown endpoint result {result!r}")
        if resource not in self._endpoint_resources:
            resource = OTHER_RESOURCE
        self._endpoint_requests.labels(result=result, resource=resource).inc()
        self._endpoint_duration.labels(result=result).observe(seconds)

    def set_ready(self, ready: bool) -> None:
        """Set ``entra_tokend_ready`` to 1 or 0."""
        self._ready.set(1 if ready else 0)


def _remove(metric: Gauge | Counter | Histogram, *labelvalues: str) -> None:
    # remove() raises KeyError for a label set that was never created; removal is idempotent here.
    try:
        metric.remove(*labelvalues)
    except KeyError:
        return
