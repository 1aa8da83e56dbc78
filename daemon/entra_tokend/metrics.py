"""Prometheus metrics for entra-tokend.

Every metric lives in the daemon's own :class:`CollectorRegistry`, so nothing from the
process-global default registry (Python GC, process stats) leaks into the scrape and tests can
build as many independent instances as they like.

Label values are bounded by construction: ``token`` and ``identity`` are configured names,
``result`` is ``success``/``failure`` and ``reason`` is one of :data:`REASONS`. Nothing derived
from a token, an assertion, a scope or an Entra response is ever used as a label.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

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


class _TokenSeries:
    """One token's per-token values. prometheus_client keeps a child object (a value and a
    lock each) per label set: 4-5 of them per token were ~2.1 KiB of the memory per token
    (bench/FINDINGS.md, issue 18); one slotted record is ~0.2 KiB.

    Every change goes through :meth:`Metrics` methods, which call :meth:`changed`, so that
    ``version`` tells the exposition cache which tokens to render again."""

    __slots__ = (
        "expiry",
        "failures",
        "hook_failures",
        "last_success",
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
        self.version = next(_VERSIONS)

    def changed(self) -> None:
        """Mark the record changed since any rendering of it."""
        self.version = next(_VERSIONS)


_Samples = Callable[[str, _TokenSeries], Sequence[tuple[Sequence[str], float]]]


@dataclass(frozen=True)
class _TokenFamily:
    """One per-token family: its name, help and labels, and a record's samples in it."""

    kind: type[CounterMetricFamily] | type[GaugeMetricFamily]
    name: str
    documentation: str
    labels: tuple[str, ...]
    samples: _Samples

    def build(self, items: Sequence[tuple[str, _TokenSeries]]) -> tuple[Metric, list[int]]:
        """The family with the samples of *items* (token, record) in their order, and how many
        samples each token has in it."""
        family = self.kind(self.name, self.documentation, labels=self.labels)
        counts: list[int] = []
        for token, series in items:
            samples = self.samples(token, series)
            for labels, value in samples:
                family.add_metric(labels, value)
            counts.append(len(samples))
        return family, counts


def _failures(token: str, s: _TokenSeries) -> Sequence[tuple[Sequence[str], float]]:
    by_reason = s.failures
    return () if by_reason is None else [([token, r], n) for r, n in by_reason.items()]


def _hooks(token: str, s: _TokenSeries) -> Sequence[tuple[Sequence[str], float]]:
    return () if s.hook_failures is None else (([token], s.hook_failures),)


_TOKEN_FAMILIES: tuple[_TokenFamily, ...] = (
    _TokenFamily(
        GaugeMetricFamily,
        "entra_tokend_token_expiry_timestamp_seconds",
        "Expiry of the access token currently on disk, as a unix timestamp; 0: none yet.",
        ("token",),
        lambda token, s: (([token], s.expiry),),
    ),
    _TokenFamily(
        GaugeMetricFamily,
        "entra_tokend_token_last_success_timestamp_seconds",
        "Time of the last successful refresh (token exchanged and written), unix seconds; "
        "0: never.",
        ("token",),
        lambda token, s: (([token], s.last_success),),
    ),
    _TokenFamily(
        CounterMetricFamily,
        "entra_tokend_token_refreshes",
        "Refresh attempts by result (success or failure).",
        ("token", "result"),
        lambda token, s: (
            ([token, "success"], s.successes),
            ([token, "failure"], s.refresh_failures),
        ),
    ),
    _TokenFamily(
        CounterMetricFamily,
        "entra_tokend_token_refresh_failures",
        "Failed refresh attempts by reason.",
        ("token", "reason"),
        _failures,
    ),
    _TokenFamily(
        CounterMetricFamily,
        "entra_tokend_hook_failures",
        "Post-write hooks that failed or timed out.",
        ("token",),
        _hooks,
    ),
)
_HOOK_FAMILY = len(_TOKEN_FAMILIES) - 1  # the last one, registered after the identity families


class _TokenCollector(Collector):
    """Yields per-token families (``_TOKEN_FAMILIES[first:last]``) from the ``_TokenSeries``
    records, in the exposition prometheus_client's Gauge and Counter would give (same names,
    help, labels and values).

    This is what ``encoder(registry)`` renders; ``/metrics`` renders the same bytes through
    :meth:`Metrics.render`, which caches each token's lines. ``collect`` copies the dict first
    (one C call under the GIL), so a caller in another thread never sees it change size.
    """

    def __init__(self, series: dict[str, _TokenSeries], first: int, last: int) -> None:
        self._series = series
        self.indices = range(first, last)

    def describe(self) -> Iterator[Metric]:
        """The families without samples (for the registry's duplicate-name check)."""
        return (_TOKEN_FAMILIES[k].build(())[0] for k in self.indices)

    def collect(self) -> Iterator[Metric]:
        """The families with one sample per configured token (per reason for failures)."""
        items = list(self._series.items())
        return (_TOKEN_FAMILIES[k].build(items)[0] for k in self.indices)


class _Families(Collector):
    """A collector yielding the families of some collectors (or given families), in order: what
    an encoder renders for one part of the exposition."""

    def __init__(self, collectors: Sequence[Collector] = (), families: Sequence[Metric] = ()):
        self._collectors = collectors
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """The given families, then each collector's."""
        yield from self._families
        for collector in self._collectors:
            yield from collector.collect()


class _Unsplittable(Exception):
    """The encoder's output does not have the shape the cache relies on (each family: its
    HELP/TYPE lines as rendered without samples, then one line per sample, none starting with
    ``#``); the exposition is then rendered whole by the encoder."""


Encoder = Callable[[Collector], bytes]
"""An exposition encoder, as ``prometheus_client.exposition.choose_encoder`` returns."""

RENDER_BATCH = 32
"""Tokens rendered per step of :meth:`Metrics.render`. With 5-7 samples per token a step took
~1 ms of CPU in the classic format and ~2 ms in OpenMetrics on the 2-core bench machine (64
took 2-4 / 4-8 ms under load); a larger batch saves nothing measurable in total."""

_MAX_VARIANTS = 2  # formats cached at once: a Prometheus server's, and someone's curl


class _Variant:
    """One format's cache: the encoder's fixed parts (the trailer, each per-token family's
    HELP/TYPE lines) and, per token, the record version last rendered and its sample lines in
    each per-token family. Every byte comes from the encoder; only the splitting is ours."""

    __slots__ = ("encoder", "header_lines", "headers", "rows", "trailer")

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.trailer = encoder(_Families())  # b"# EOF\n" in OpenMetrics, b"" in the text format
        self.headers = [self.encode([f.build(())[0]]) for f in _TOKEN_FAMILIES]
        self.header_lines = [h.count(b"\n") for h in self.headers]
        self.rows: dict[str, tuple[int, tuple[bytes, ...]]] = {}

    def encode(
        self, families: Sequence[Metric] = (), collectors: Sequence[Collector] = ()
    ) -> bytes:
        """The encoder's output for *families* then *collectors*, without its trailer."""
        out = self.encoder(_Families(collectors, families))
        if not out.endswith(self.trailer):
            raise _Unsplittable("no trailer")
        return out[: len(out) - len(self.trailer)]

    def render_tokens(self, items: Sequence[tuple[str, _TokenSeries]]) -> list[tuple[bytes, ...]]:
        """Each token's sample lines in each per-token family, from one encoder call over the
        families of *items*. Raises _Unsplittable."""
        built = [f.build(items) for f in _TOKEN_FAMILIES]
        lines = self.encode([family for family, _ in built]).split(b"\n")
        # Each family is its header lines, then one line per sample in the order added:
        # prometheus_client escapes newlines in label values and help text.
        rows: list[list[bytes]] = [[] for _ in items]
        pos = 0
        for k, (_, counts) in enumerate(built):
            end = pos + self.header_lines[k]
            if b"\n".join(lines[pos:end]) + b"\n" != self.headers[k]:
                raise _Unsplittable("header")
            pos = end
            for row, count in zip(rows, counts, strict=True):
                end = pos + count
                sample = lines[pos:end]
                if any(line.startswith(b"#") for line in sample):
                    raise _Unsplittable("sample")
                row.append(b"\n".join(sample) + b"\n" if count else b"")
                pos = end
        if lines[pos:] != [b""]:
            raise _Unsplittable("trailing lines")
        return [tuple(row) for row in rows]


class Metrics:
    """The daemon's metrics, updated by the scheduler and exposed by :mod:`entra_tokend.server`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # token -> its per-token values, exposed by two collectors registered where the
        # Gauge/Counter objects they replace were, so the exposition keeps its order.
        self._series: dict[str, _TokenSeries] = {}
        tokens = _TokenCollector(self._series, 0, _HOOK_FAMILY)
        r.register(tokens)
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
        hooks = _TokenCollector(self._series, _HOOK_FAMILY, _HOOK_FAMILY + 1)
        r.register(hooks)
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
        self._file_failures = Counter(
            "entra_tokend_file_render_failures",
            "[file.NAME] renders that left the previous file in place, by reason "
            "(missing_claim, write_error; hook: its hook failed after a write).",
            ["file", "reason"],
            registry=r,
        )
        # The registry's collectors in registration order (its exposition order), for render().
        self._parts: tuple[Collector, ...] = (
            tokens,
            self._exchange_duration,
            self._assertion_expiry,
            self._assertion_rotations,
            hooks,
            self._ready,
            self._output_dir_world_writable,
            self._build_info,
            self._endpoint_requests,
            self._endpoint_duration,
            self._file_failures,
        )
        self._variants: dict[str, _Variant] = {}
        self.tokens_rendered = 0
        """Per-token renderings done by render() so far (tests read it)."""
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
            series.changed()
        elif series.hook_failures is None:
            series.hook_failures = 0.0
            series.changed()
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
        series.changed()

    def file_configured(self, name: str) -> None:
        """Create ``[file.NAME]``'s failure series at zero (label ``file`` is its name)."""
        for reason in FILE_FAILURES:
            self._file_failures.labels(file=name, reason=reason)

    def file_removed(self, name: str) -> None:
        """Drop a removed file's series."""
        for reason in FILE_FAILURES:
            _remove(self._file_failures, name, reason)

    def file_render_failed(self, name: str, reason: str) -> None:
        """Count a failed render (or hook) of ``[file.NAME]``; ``reason`` in FILE_FAILURES."""
        self._file_failures.labels(file=name, reason=reason).inc()

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

    def render(self, encoder: Encoder, key: str) -> Generator[None, None, bytes]:
        """The exposition ``encoder(self.registry)`` gives, byte for byte, rendered in steps:
        each ``next()`` formats at most :data:`RENDER_BATCH` tokens, the last one joins the
        cached lines and formats the other families, and the generator returns the body.

        *key* names the format (the response's content type). Each format keeps, per token,
        the sample lines it rendered and the record version they show, so a scrape formats
        again only the tokens that changed since the last scrape of that format and joins the
        rest (issue 18: 1,000 tokens took ~65 ms of CPU per scrape).

        Meant for the event loop, which is also the only writer of the records: between steps
        records may change; a token shows the values it had when its step ran, and the tokens
        are those configured when the render began. The other families (per identity,
        endpoint, ready, build info) are few and rendered whole each time.
        """
        try:
            return (yield from self._render(self._variant(encoder, key)))
        except _Unsplittable:
            # Not the shape this prometheus_client version was tested with: correct first.
            self._variants.pop(key, None)
            return encoder(self.registry)

    def _render(self, variant: _Variant) -> Generator[None, None, bytes]:
        rows = yield from self._token_rows(variant)
        out: list[bytes] = []
        plain: list[Collector] = []
        for part in self._parts:
            if not isinstance(part, _TokenCollector):
                plain.append(part)
                continue
            if plain:
                out.append(variant.encode(collectors=plain))
                plain = []
            for k in part.indices:
                out.append(variant.headers[k])
                out.extend([row[k] for row in rows])
        if plain:
            out.append(variant.encode(collectors=plain))
        out.append(variant.trailer)
        return b"".join(out)

    @property
    def formats_cached(self) -> list[str]:
        """The formats (content types) whose per-token lines are kept, least recently used
        first; at most two."""
        return list(self._variants)

    def _variant(self, encoder: Encoder, key: str) -> _Variant:
        variant = self._variants.pop(key, None)
        if variant is None:
            variant = _Variant(encoder)
            while len(self._variants) >= _MAX_VARIANTS:  # drop the least recently used
                del self._variants[next(iter(self._variants))]
        self._variants[key] = variant  # (re)inserted last: most recently used
        return variant

    def _token_rows(self, variant: _Variant) -> Generator[None, None, list[tuple[bytes, ...]]]:
        """Each configured token's lines in each per-token family, in configuration order."""
        items = list(self._series.items())
        cached = variant.rows
        rows: dict[str, tuple[int, tuple[bytes, ...]]] = {}
        stale: list[tuple[str, _TokenSeries]] = []
        for token, series in items:
            hit = cached.get(token)
            if hit is not None and hit[0] == series.version:
                rows[token] = hit
            else:
                stale.append((token, series))
        for start in range(0, len(stale), RENDER_BATCH):
            batch = stale[start : start + RENDER_BATCH]
            for (token, series), lines in zip(batch, variant.render_tokens(batch), strict=True):
                rows[token] = (series.version, lines)
            self.tokens_rendered += len(batch)
            yield  # let the loop run after each batch (the joins come in a step of their own)
        # Only the tokens of this scrape stay cached: removed ones are dropped here.
        variant.rows = rows
        return [rows[token][1] for token, _ in items]


def _remove(metric: Gauge | Counter | Histogram, *labelvalues: str) -> None:
    # remove() raises KeyError for a label set that was never created; removal is idempotent here.
    try:
        metric.remove(*labelvalues)
    except KeyError:
        return
