"""The daemon's metrics as plain values: what runners, credential sources, the endpoint and the
daemon record (``token_written``, ``refresh_failed``, ...).

This module is the domain side only: it holds numbers and imports no exposition library, so the
modules that record (runner, credentials, endpoint) stay free of prometheus_client.
:mod:`entra_tokend.exposition` turns a :class:`Metrics` into the Prometheus text formats.

Label values are bounded by construction: ``token`` and ``identity`` are configured names,
``result`` is ``success``/``failure`` (refreshes) or one of :data:`ENDPOINT_RESULTS`, ``reason`` is
one of :data:`REASONS`, ``resource`` an allowed endpoint resource or ``other``. Nothing derived
from a token, an assertion, a scope or an Entra response is ever used as a label.

Every container below keeps insertion order, which is the order series appear in a scrape.
"""

from __future__ import annotations

import bisect
import itertools

import entra_tokend
from entra_tokend.model import Reason

REASONS: tuple[str, ...] = tuple(str(reason) for reason in Reason)
"""The fixed set of refresh failure reasons (the ``reason`` label)."""

RESULTS: tuple[str, ...] = ("success", "failure")
FILE_FAILURES: tuple[str, ...] = ("missing_claim", "write_error", "hook")
"""The ``reason`` label of ``entra_tokend_file_render_failures_total``."""

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

_VERSIONS = itertools.count(1)
"""Every change of a per-token record takes the next number: a version is never reused, even
by a record made again for a removed token's name, so a cached rendering is current exactly
when its version is the record's."""


class TokenSeries:
    """One token's values. Slotted: with thousands of tokens these records are most of the
    metrics' memory. Changed only through :class:`Metrics`, which bumps ``version`` so that the
    exposition knows which tokens to render again."""

    __slots__ = (
        "expiry",
        "failures",
        "hook_failures",
        "last_success",
        "redelivered",
        "refresh_failures",
        "successes",
        "version",
    )

    def __init__(self, hook: bool) -> None:
        self.expiry = 0.0  # unix seconds; 0: no token on disk yet
        self.last_success = 0.0  # unix seconds; 0: never
        self.successes = 0.0
        self.refresh_failures = 0.0
        # reason -> count; None until the first failure (series appear with it).
        self.failures: dict[str, float] | None = None
        self.hook_failures: float | None = 0.0 if hook else None  # None: no hook, no series
        self.redelivered: float | None = None  # None until the first (the series with it)
        self.version = next(_VERSIONS)

    def changed(self) -> None:
        """Mark the record changed since any rendering of it."""
        self.version = next(_VERSIONS)


class HistogramSeries:
    """One label set of a histogram: ``counts[i]`` observations fell in bucket *i* (upper
    bound ``bounds[i]`` inclusive; the last bucket is +Inf), ``total`` is their sum (seconds)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0.0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count *value* in the first bucket whose upper bound is ≥ it."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class Metrics:
    """The daemon's metric values. Updated from the event loop (and tests); read by
    :mod:`entra_tokend.exposition`. The read-only attributes:

    * ``tokens``: token name -> :class:`TokenSeries`, in configuration order;
    * ``exchange_duration``: identity -> :class:`HistogramSeries` (seconds per token request);
    * ``assertion_expiry``: identity -> the projected token's ``exp`` (unix seconds);
    * ``assertion_rotations``: identity -> changes of the projected token seen;
    * ``ready``, ``output_dir_world_writable``: 0 or 1; ``version``: the running version;
    * ``endpoint_requests``: (result, resource) -> count; ``endpoint_duration``: result ->
      :class:`HistogramSeries`;
    * ``file_failures``: (file, reason) -> failed renders of a ``[file.NAME]``.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, TokenSeries] = {}
        self.exchange_duration: dict[str, HistogramSeries] = {}
        self.assertion_expiry: dict[str, float] = {}
        self.assertion_rotations: dict[str, float] = {}
        self.ready = 0.0
        self.output_dir_world_writable = 0.0
        self.version = entra_tokend.__version__
        self.endpoint_requests: dict[tuple[str, str], float] = {}
        self.endpoint_duration: dict[str, HistogramSeries] = {}
        self._endpoint_resources: set[str] = set()
        self.file_failures: dict[tuple[str, str], float] = {}
        # token -> identity, so an identity's series go away with its last token.
        self._identities: dict[str, str] = {}

    def token_configured(self, token: str, identity: str, *, hook: bool = False) -> None:
        """Create the series the alerts read at zero, so rates and alerts work from the first
        scrape: ``token_refreshes_total`` for both results (EntraTokendRefreshFailing), the
        identity's histogram and rotation counter, and ``hook_failures_total`` when the token
        has a hook (EntraTokendHookFailing). Per-reason failure series appear with the first
        failure of that reason: zero series for every reason of every token would be most of
        the exposition, and no rule reads them. A token configured again (reload) keeps its
        values."""
        previous = self._identities.get(token)
        self._identities[token] = identity
        if previous is not None and previous != identity:
            self._drop_identity_if_unused(previous)
        series = self.tokens.get(token)
        if series is None:
            self.tokens[token] = TokenSeries(hook)
        elif not hook:
            series.hook_failures = None
            series.changed()
        elif series.hook_failures is None:
            series.hook_failures = 0.0
            series.changed()
        self._exchange(identity)
        self.assertion_rotations.setdefault(identity, 0.0)

    def token_removed(self, token: str) -> None:
        """Drop every series of *token*; drop its identity's series if no token uses it now."""
        identity = self._identities.pop(token, None)
        self.tokens.pop(token, None)
        if identity is not None:
            self._drop_identity_if_unused(identity)

    def _record(self, token: str) -> TokenSeries:
        # Configured tokens have one; an update for another creates it.
        series = self.tokens.get(token)
        if series is None:
            series = self.tokens[token] = TokenSeries(hook=False)
        return series

    def _exchange(self, identity: str) -> HistogramSeries:
        series = self.exchange_duration.get(identity)
        if series is None:
            series = self.exchange_duration[identity] = HistogramSeries(EXCHANGE_BUCKETS)
        return series

    def _drop_identity_if_unused(self, identity: str) -> None:
        if identity not in self._identities.values():
            self.exchange_duration.pop(identity, None)
            self.assertion_expiry.pop(identity, None)
            self.assertion_rotations.pop(identity, None)

    def token_adopted(self, token: str, expires_on: float) -> None:
        """Record a still-valid token found on disk at start or reload (no refresh counted)."""
        series = self._record(token)
        series.expiry = expires_on
        series.changed()

    def token_written(self, token: str, expires_on: float, now: float) -> None:
        """Record a successful refresh: the new token with expiry *expires_on* is on disk."""
        series = self._record(token)
        series.expiry = expires_on
        series.last_success = now
        series.successes += 1
        series.changed()

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
        series.changed()

    def exchange_observed(self, identity: str, seconds: float) -> None:
        """Record the latency of one token request (successful or not)."""
        self._exchange(identity).observe(seconds)

    def assertion_loaded(self, identity: str, expires_on: float | None) -> None:
        """Record the expiry of the projected token just read; ``None`` when it has no exp."""
        self.assertion_rotations.setdefault(identity, 0.0)
        if expires_on is None:
            # A stale value would keep the staleness alert firing (or silent) on old data.
            self.assertion_expiry.pop(identity, None)
        else:
            self.assertion_expiry[identity] = expires_on

    def assertion_rotated(self, identity: str) -> None:
        """Count a change of the projected token seen by the watcher."""
        self.assertion_rotations[identity] = self.assertion_rotations.get(identity, 0.0) + 1

    def hook_failed(self, token: str) -> None:
        """Count a failed post-write hook of *token*."""
        series = self._record(token)
        series.hook_failures = (series.hook_failures or 0.0) + 1
        series.changed()

    def output_redelivered(self, token: str) -> None:
        """Count a token file put back after another writer deleted or replaced it."""
        series = self._record(token)
        series.redelivered = (series.redelivered or 0.0) + 1
        series.changed()

    def file_configured(self, name: str) -> None:
        """Create ``[file.NAME]``'s failure series at zero (label ``file`` is its name)."""
        for reason in FILE_FAILURES:
            self.file_failures.setdefault((name, reason), 0.0)

    def file_removed(self, name: str) -> None:
        """Drop a removed file's series."""
        for reason in FILE_FAILURES:
            self.file_failures.pop((name, reason), None)

    def file_render_failed(self, name: str, reason: str) -> None:
        """Count a failed render (or hook) of ``[file.NAME]``; ``reason`` in FILE_FAILURES."""
        self.file_failures[(name, reason)] = self.file_failures.get((name, reason), 0.0) + 1

    def set_output_dir_world_writable(self, insecure: bool) -> None:
        """Set ``entra_tokend_output_dir_world_writable`` to 1 or 0."""
        self.output_dir_world_writable = 1.0 if insecure else 0.0

    def endpoint_configured(self, resources: list[str]) -> None:
        """Create the endpoint's series at zero for each allowed resource (and ``other``)."""
        self._endpoint_resources = {*resources, OTHER_RESOURCE}
        for result in ENDPOINT_RESULTS:
            self._endpoint_histogram(result)
            for resource in self._endpoint_resources:
                self.endpoint_requests.setdefault((result, resource), 0.0)

    def _endpoint_histogram(self, result: str) -> HistogramSeries:
        series = self.endpoint_duration.get(result)
        if series is None:
            series = self.endpoint_duration[result] = HistogramSeries(ENDPOINT_BUCKETS)
        return series

    def endpoint_request(self, result: str, resource: str, seconds: float) -> None:
        """Count one endpoint request. ``resource`` outside the configured set counts as
        ``other`` and an unknown ``result`` raises ValueError (labels stay bounded)."""
        if result not in ENDPOINT_RESULTS:
            raise ValueError(f"unknown endpoint result {result!r}")
        if resource not in self._endpoint_resources:
            resource = OTHER_RESOURCE
        key = (result, resource)
        self.endpoint_requests[key] = self.endpoint_requests.get(key, 0.0) + 1
        self._endpoint_histogram(result).observe(seconds)

    def set_ready(self, ready: bool) -> None:
        """Set ``entra_tokend_ready`` to 1 or 0."""
        self.ready = 1.0 if ready else 0.0
