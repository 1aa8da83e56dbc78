"""``/metrics``: a :class:`~entra_tokend.metrics.Metrics` rendered in the Prometheus text formats,
the format negotiated from ``Accept``, each token's lines cached between scrapes.

The families, in exposition order::

    per token     entra_tokend_token_expiry_timestamp_seconds, ..._token_last_success_...,
                  ..._token_refreshes, ..._token_refresh_failures
    per identity  ..._exchange_duration_seconds, ..._assertion_expiry_timestamp_seconds,
                  ..._assertion_rotations
    per token     ..._hook_failures, ..._output_redelivered
    the rest      ..._ready, ..._output_dir_world_writable, ..._build_info,
                  ..._endpoint_requests, ..._endpoint_request_duration_seconds

:func:`registry` describes them with prometheus_client's public metric families, and
prometheus_client's public encoders render them: that is the reference. :class:`Exposition`
renders the same bytes for ``/metrics`` cheaply: the per-token sample lines (the bulk, with
thousands of tokens) are formatted here and cached per token and format until the token's record
changes; HELP/TYPE lines and the other families come from the encoder. The sample-line rules
here restate the formats', so tests compare every format with the encoder byte for byte, and
pyproject pins prometheus-client to the minor range those tests ran on."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import (
    CONTENT_TYPE_LATEST,
    CONTENT_TYPE_PLAIN_0_0_4,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from entra_tokend.exposition_files import file_families
from entra_tokend.metrics import HistogramSeries, Metrics, TokenSeries

_Samples = Callable[[str, TokenSeries], Sequence[tuple[Sequence[str], float]]]


@dataclass(frozen=True)
class _TokenFamily:
    """One per-token family: its name, help and labels, and a record's samples in it."""

    counter: bool
    name: str
    documentation: str
    labels: tuple[str, ...]
    samples: _Samples

    def family(self, items: Sequence[tuple[str, TokenSeries]] = ()) -> Metric:
        """The family with the samples of *items* (token, record), in their order."""
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        family = kind(self.name, self.documentation, labels=self.labels)
        for token, series in items:
            for labels, value in self.samples(token, series):
                family.add_metric(labels, value)
        return family


TOKEN_FAMILIES: tuple[_TokenFamily, ...] = (
    _TokenFamily(
        False,
        "entra_tokend_token_expiry_timestamp_seconds",
        "Expiry of the access token currently on disk, as a unix timestamp; 0: none yet.",
        ("token",),
        lambda token, s: (([token], s.expiry),),
    ),
    _TokenFamily(
        False,
        "entra_tokend_token_last_success_timestamp_seconds",
        "Time of the last successful refresh (token exchanged and written), unix seconds; "
        "0: never.",
        ("token",),
        lambda token, s: (([token], s.last_success),),
    ),
    _TokenFamily(
        True,
        "entra_tokend_token_refreshes",
        "Refresh attempts by result (success or failure).",
        ("token", "result"),
        lambda token, s: (
            ([token, "success"], s.successes),
            ([token, "failure"], s.refresh_failures),
        ),
    ),
    _TokenFamily(
        True,
        "entra_tokend_token_refresh_failures",
        "Failed refresh attempts by reason.",
        ("token", "reason"),
        lambda token, s: [([token, r], n) for r, n in (s.failures or {}).items()],
    ),
    _TokenFamily(
        True,
        "entra_tokend_hook_failures",
        "Post-write hooks that failed or timed out.",
        ("token",),
        lambda token, s: () if s.hook_failures is None else (([token], s.hook_failures),),
    ),
    _TokenFamily(
        True,
        "entra_tokend_output_redelivered",
        "Token files put back after another writer deleted or replaced them.",
        ("token",),
        lambda token, s: () if s.redelivered is None else (([token], s.redelivered),),
    ),
)
_HOOKS = 4  # the hooks' family and those after it are exposed after the identity families


def go_float(value: float) -> str:
    """*value* as the text formats write numbers (Go's shortest ``%g``): ``NaN``, ``+Inf``,
    ``-Inf``; positive values of 10^6 and more with an exponent (``1.5e+06``) where Python's
    ``repr`` writes all digits; otherwise ``repr``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    point = text.find(".")
    if value > 0 and point > 6:
        digits = (text[:point] + text[point + 1 :]).rstrip("0")
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{mantissa}e+{point - 1:02d}"
    return text


def _histogram(name: str, doc: str, label: str, series: dict[str, HistogramSeries]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, s in series.items():
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*s.bounds, math.inf), s.counts, strict=True):
            cumulative += count
            buckets.append((go_float(bound), cumulative))
        family.add_metric([value], buckets, s.total)
    return family


def _identity_families(m: Metrics) -> list[Metric]:
    expiry = GaugeMetricFamily(
        "entra_tokend_assertion_expiry_timestamp_seconds",
        "Expiry (exp claim) of the projected service-account token, unix seconds.",
        labels=["identity"],
    )
    for identity, value in m.assertion_expiry.items():
        expiry.add_metric([identity], value)
    rotations = CounterMetricFamily(
        "entra_tokend_assertion_rotations",
        "Times the projected service-account token was seen to change.",
        labels=["identity"],
    )
    for identity, value in m.assertion_rotations.items():
        rotations.add_metric([identity], value)
    duration = _histogram(
        "entra_tokend_exchange_duration_seconds",
        "Latency of token requests to the Entra token endpoint.",
        "identity",
        m.exchange_duration,
    )
    return [duration, expiry, rotations]


def _other_families(m: Metrics) -> list[Metric]:
    ready = GaugeMetricFamily(
        "entra_tokend_ready",
        "1 when every configured token is on disk and unexpired, else 0.",
        value=m.ready,
    )
    world_writable = GaugeMetricFamily(
        "entra_tokend_output_dir_world_writable",
        "1 when output_dir is world-writable without the sticky bit (e.g. an emptyDir with "
        "fsGroup); tokens are still written safely, but others can delete them.",
        value=m.output_dir_world_writable,
    )
    build_info = GaugeMetricFamily(
        "entra_tokend_build_info",
        "Always 1; the version label names the running entra-tokend.",
        labels=["version"],
    )
    build_info.add_metric([m.version], 1)
    requests = CounterMetricFamily(
        "entra_tokend_endpoint_requests",
        "Managed-identity endpoint requests by result and allowed resource.",
        labels=["result", "resource"],
    )
    for (result, resource), value in m.endpoint_requests.items():
        requests.add_metric([result, resource], value)
    duration = _histogram(
        "entra_tokend_endpoint_request_duration_seconds",
        "Latency of managed-identity endpoint requests (time in the handler).",
        "result",
        m.endpoint_duration,
    )
    return [ready, world_writable, build_info, requests, duration, *file_families(m)]


class _Families(Collector):
    """A collector yielding the families it is given: what an encoder renders."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """The families, in order."""
        return iter(self._families)


class _MetricsCollector(Collector):
    """Every family of a :class:`Metrics`, in exposition order, read at collect time.
    ``collect`` copies the token dict first (one C call under the GIL), so a caller in
    another thread never sees it change size."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """The families with the current values."""
        m = self._metrics
        items = list(m.tokens.items())
        yield from (f.family(items) for f in TOKEN_FAMILIES[:_HOOKS])
        yield from _identity_families(m)
        yield from (f.family(items) for f in TOKEN_FAMILIES[_HOOKS:])
        yield from _other_families(m)


def registry(metrics: Metrics) -> CollectorRegistry:
    """A registry holding only *metrics*' families (nothing process-global: no GC or process
    series), for any encoder and ``get_sample_value``."""
    r = CollectorRegistry(auto_describe=False)
    r.register(_MetricsCollector(metrics))
    return r


_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8, openmetrics.DOTS, openmetrics.VALUES)


@dataclass(frozen=True)
class Format:
    """One exposition format: OpenMetrics or the classic text format, the OpenMetrics version
    (``1.0.0`` or ``2.0.0``) and the name escaping scheme; ``content_type`` is what the
    response says."""

    openmetrics: bool
    version: str
    escaping: str
    content_type: str

    def encode(self, families: Sequence[Metric]) -> bytes:
        """prometheus_client's rendering of *families* in this format, without OpenMetrics'
        ``# EOF`` trailer."""
        if self.openmetrics:
            out: bytes = openmetrics.generate_latest(  # type: ignore[no-untyped-call]
                _Families(families), escaping=self.escaping, version=self.version
            )
            return out.removesuffix(b"# EOF\n")
        return generate_latest(_Families(families), escaping=self.escaping)

    @property
    def trailer(self) -> bytes:
        """What ends an exposition in this format."""
        return b"# EOF\n" if self.openmetrics else b""

    def name(self, name: str, *, sample: bool = False) -> str:
        """A metric (*sample*: a sample's) or label name of ours, legacy characters only, as
        this format writes it: ``dots`` doubles underscores; OpenMetrics with ``values`` also
        escapes sample names that need no escaping (``U__`` and doubled underscores)."""
        if self.escaping == openmetrics.DOTS:
            return name.replace("_", "__")
        if sample and self.openmetrics and self.escaping == openmetrics.VALUES:
            return "U__" + name.replace("_", "__")
        return name


TEXT_0_0_4 = Format(False, "", openmetrics.UNDERSCORES, CONTENT_TYPE_PLAIN_0_0_4)
"""The classic text format: what a scraper that asks for nothing in particular gets."""
_UNPARSABLE = Format(False, "", openmetrics.UNDERSCORES, CONTENT_TYPE_LATEST)


def _params(tokens: list[str]) -> tuple[str, str]:
    """The ``version`` and ``escaping`` parameters of one media range (first of each); an
    unknown escaping is ``underscores``."""
    version = escaping = ""
    for token in tokens:
        key, sep, value = token.strip().partition("=")
        if sep and key == "version" and not version:
            version = value
        elif sep and key == "escaping" and not escaping:
            escaping = value
    return version, escaping if escaping in _ESCAPINGS else openmetrics.UNDERSCORES


def _version(text: str) -> tuple[int, ...]:
    """``1.0.0`` -> (1, 0, 0); ValueError for anything but dot-separated integers."""
    return tuple(int(part) for part in text.split("."))


def negotiate(accept: str) -> Format:
    """The format for an ``Accept`` header, chosen as prometheus_client's ``choose_encoder``
    chooses (the first OpenMetrics or ``text/plain`` range of version ≥ 1.0.0, else the classic
    text format), with the OpenMetrics version reduced to ``1.0.0`` or ``2.0.0`` (the only
    distinction its encoder makes). The set of answers is closed, so a client cannot mint a
    new format, and a full render with it, per request (``version=1.0.1``, ``1.0.2``, ...).
    A header with a version that is not numbers gets the text format."""
    for accepted in (accept or "").split(","):
        tokens = accepted.split(";")
        media = tokens[0].strip()
        if media not in ("application/openmetrics-text", "text/plain"):
            continue
        version, escaping = _params(tokens)
        if media == "application/openmetrics-text" and not version:
            return Format(True, "1.0.0", openmetrics.UNDERSCORES, openmetrics.CONTENT_TYPE_LATEST)
        try:
            asked = _version(version) if version else ()
        except ValueError:
            return _UNPARSABLE
        if asked < (1, 0, 0):
            continue
        if media == "text/plain":
            return Format(False, "", escaping, f"{CONTENT_TYPE_LATEST}; escaping={escaping}")
        canonical = "2.0.0" if asked >= (2, 0, 0) else "1.0.0"
        content_type = (
            f"application/openmetrics-text; version={canonical}; charset=utf-8; escaping={escaping}"
        )
        return Format(True, canonical, escaping, content_type)
    return TEXT_0_0_4


RENDER_BATCH = 32
"""Tokens formatted per step of :meth:`Exposition.render`: about a millisecond of CPU on a
slow machine, short enough for the event loop and large enough that the steps cost nothing
measurable in total."""

_MAX_FORMATS = 2  # formats cached at once: a Prometheus server's, and someone's curl


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Cache:
    """One format's cached parts: each per-token family's HELP/TYPE lines, and per token the
    record version last rendered with its sample lines in each per-token family."""

    __slots__ = ("fmt", "headers", "rows", "sample_names")

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.headers = [fmt.encode([f.family()]) for f in TOKEN_FAMILIES]
        self.sample_names = [
            fmt.name(f.name + "_total" if f.counter else f.name, sample=True)
            for f in TOKEN_FAMILIES
        ]
        self.rows: dict[str, tuple[int, tuple[bytes, ...]]] = {}

    def token_lines(self, token: str, series: TokenSeries) -> tuple[bytes, ...]:
        """*token*'s sample lines in each per-token family, as the encoder writes them: label
        pairs sorted by name, values in Go's float format."""
        lines: list[bytes] = []
        for family, sample_name in zip(TOKEN_FAMILIES, self.sample_names, strict=True):
            out = []
            for values, value in family.samples(token, series):
                pairs = sorted(zip(family.labels, values, strict=True))
                labels = ",".join(f'{self.fmt.name(k)}="{_label_value(v)}"' for k, v in pairs)
                out.append(f"{sample_name}{{{labels}}} {go_float(value)}\n")
            lines.append("".join(out).encode())
        return tuple(lines)


class Exposition:
    """``/metrics`` of one :class:`Metrics`: :meth:`render` gives what prometheus_client's
    encoder gives for :func:`registry`, byte for byte, formatting again only the tokens whose
    records changed since the last render in the same format."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._caches: dict[Format, _Cache] = {}
        self.tokens_rendered = 0
        """Per-token renderings done so far (tests read it)."""

    @property
    def formats_cached(self) -> list[str]:
        """The content types whose per-token lines are kept, least recently used first; at
        most two."""
        return [fmt.content_type for fmt in self._caches]

    def render(self, fmt: Format) -> Generator[None, None, bytes]:
        """The exposition in *fmt*, rendered in steps: each ``next()`` formats at most
        :data:`RENDER_BATCH` tokens, the last one joins the cached lines and encodes the other
        families, and the generator returns the body.

        Meant for the event loop, which is also the only writer of the records: between steps
        records may change; a token shows the values it had when its step ran, and the tokens
        are those configured when the render began. The other families (per identity,
        endpoint, ready, build info) are few and encoded whole each time.
        """
        cache = self._cache(fmt)
        rows = yield from self._token_rows(cache)
        m = self.metrics

        def family(k: int) -> list[bytes]:
            return [cache.headers[k], *(row[k] for row in rows)]

        out = [line for k in range(_HOOKS) for line in family(k)]
        out.append(fmt.encode(_identity_families(m)))
        out.extend(line for k in range(_HOOKS, len(TOKEN_FAMILIES)) for line in family(k))
        out.append(fmt.encode(_other_families(m)))
        out.append(fmt.trailer)
        return b"".join(out)

    def _cache(self, fmt: Format) -> _Cache:
        cache = self._caches.pop(fmt, None)
        if cache is None:
            cache = _Cache(fmt)
            while len(self._caches) >= _MAX_FORMATS:  # drop the least recently used
                del self._caches[next(iter(self._caches))]
        self._caches[fmt] = cache  # (re)inserted last: most recently used
        return cache

    def _token_rows(self, cache: _Cache) -> Generator[None, None, list[tuple[bytes, ...]]]:
        """Each configured token's lines in each per-token family, in configuration order."""
        items = list(self.metrics.tokens.items())
        cached = cache.rows
        rows: dict[str, tuple[int, tuple[bytes, ...]]] = {}
        stale: list[tuple[str, TokenSeries]] = []
        for token, series in items:
            hit = cached.get(token)
            if hit is not None and hit[0] == series.version:
                rows[token] = hit
            else:
                stale.append((token, series))
        for start in range(0, len(stale), RENDER_BATCH):
            for token, series in stale[start : start + RENDER_BATCH]:
                rows[token] = (series.version, cache.token_lines(token, series))
                self.tokens_rendered += 1
            yield  # let the loop run after each batch (the joins come in a step of their own)
        # Only the tokens of this scrape stay cached: removed ones are dropped here.
        cache.rows = rows
        return [rows[token][1] for token, _ in items]
