"""``Exposition.render``, the cached per-token exposition of ``/metrics``, against
prometheus_client.

The reference is prometheus_client's own encoder, chosen by its own ``choose_encoder``, over
the metrics' families (``encoder(registry(m))``): every render below must be byte-identical to
it, in every format ``choose_encoder`` can pick, through a scenario with every kind of change a
daemon makes; and ``negotiate`` must answer each Accept header with the content type
``choose_encoder`` gives. These tests are what pyproject's prometheus-client range rests on. No
timing is measured here; that a scrape re-renders only changed tokens is read from
``Exposition.tokens_rendered``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.registry import Collector

from entra_tokend.exposition import (
    RENDER_BATCH,
    TEXT_0_0_4,
    Exposition,
    Format,
    negotiate,
    registry,
)
from entra_tokend.metrics import Metrics
from entra_tokend.model import Reason
from testlib import samples

# The Accept headers of real scrapers and every escaping/version choose_encoder knows.
ACCEPTS = [
    "",  # curl, Prometheus < 2.5: text 0.0.4
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
    "application/openmetrics-text",
    # Prometheus 2.x default scrape_protocols
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;version=2.0.0;escaping=underscores",
]

# Label values that need escaping or could be mistaken for exposition structure.
ODD_TOKENS = [
    'quo"te',
    "back\\slash",
    "new\nline",
    "carriage\rreturn",
    "tab\there",
    "ünïcødé-名前",
    "# HELP entra_tokend_token_refreshes_total x",
    "} 1\nentra_tokend_ready 1",
    "",
]
# Values whose Go-style formatting differs from repr(), and the non-finite ones.
ODD_VALUES = [
    math.nan,
    math.inf,
    -math.inf,
    1e22,
    1234567.0,
    0.1,
    -0.0,
    -3.5,
    1_900_000_000.123,
    5e-324,
]


Encoder = Callable[[Collector], bytes]
UNPARSABLE = "application/openmetrics-text;version=abc"


def reference(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's encoder and content type for *accept*: ``choose_encoder``'s, and for
    a version that is not numbers (which ``choose_encoder`` raises on) the text format."""
    if accept == UNPARSABLE:
        return generate_latest, CONTENT_TYPE_LATEST
    return choose_encoder(accept)


def formats() -> list[tuple[Format, Encoder]]:
    """(our format, the reference encoder) for each Accept header and an unparsable one."""
    return [(negotiate(accept), reference(accept)[0]) for accept in [*ACCEPTS, UNPARSABLE]]


def ids(fmt: tuple[Format, Encoder]) -> str:
    return fmt[0].content_type


def render(exposition: Exposition, fmt: Format) -> tuple[bytes, int]:
    """Drive the render to the end: (body, number of steps it yielded)."""
    steps = exposition.render(fmt)
    yielded = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            body: bytes = done.value
            return body, yielded
        yielded += 1


def scenario(m: Metrics) -> Iterator[str]:
    """Every kind of change a daemon makes, in steps (yields a description after each)."""
    yield "nothing configured"
    names = [f"t{i:03d}" for i in range(2 * RENDER_BATCH + 7)] + ODD_TOKENS
    for i, name in enumerate(names):
        m.token_configured(name, "id-a" if i % 3 else "id-b", hook=i % 4 == 0)
    m.set_output_dir_world_writable(True)
    m.endpoint_configured(["https://vault.azure.net", 'odd"resource'])
    yield "configured"
    for i, name in enumerate(names[::5]):
        m.token_adopted(name, 1_900_000_000.0 + i)
    for i, name in enumerate(names[1::5]):
        m.token_written(name, expires_on=ODD_VALUES[i % len(ODD_VALUES)], now=1_899_990_000.5)
    m.assertion_loaded("id-a", 1_900_000_500.0)
    m.assertion_loaded("id-b", None)
    m.exchange_observed("id-a", 0.2)
    m.exchange_observed("id-b", 45.0)
    yield "adopted and written"
    for i, reason in enumerate(Reason):
        for name in names[i :: len(Reason) + 3]:
            m.refresh_failed(name, reason)
    for name in names[::4]:
        m.hook_failed(name)
    m.hook_failed("never-configured")  # an update for an unknown token creates its record
    m.assertion_rotated("id-a")
    m.endpoint_request("ok", "https://vault.azure.net", 0.0004)
    m.endpoint_request("forbidden", "https://elsewhere", 0.002)
    m.set_ready(True)
    yield "every failure reason, hook failures"
    yield "nothing changed"
    for name in names[2:40:3] + ODD_TOKENS[:3]:
        m.token_removed(name)
    m.token_removed("not-there")
    yield "removed"
    # A reload: hooks toggled, an identity changed, removed tokens configured again (new
    # records under old names: their cached lines must not be reused).
    for i, name in enumerate(names[:60]):
        m.token_configured(name, "id-c" if i % 7 == 0 else "id-a", hook=i % 4 != 0)
    m.token_configured(ODD_TOKENS[0], "id-a")
    m.set_ready(False)
    m.set_output_dir_world_writable(False)
    yield "reloaded"
    m.token_written(names[1], expires_on=math.nan, now=-math.inf)
    m.refresh_failed(names[1], Reason.TIMEOUT)
    yield "one token changed"


@pytest.mark.parametrize("accept", [*ACCEPTS, UNPARSABLE])
def test_negotiate_answers_as_choose_encoder(accept: str) -> None:
    """The content type prometheus_client would answer with (OpenMetrics versions reduced to
    1.0.0 or 2.0.0, which is all its encoder distinguishes)."""
    assert negotiate(accept).content_type == reference(accept)[1]


@pytest.mark.parametrize("fmt", formats(), ids=ids)
def test_render_is_byte_identical_to_prometheus_client(fmt: tuple[Format, Encoder]) -> None:
    ours, encoder = fmt
    m = Metrics()
    exposition = Exposition(m)
    for step in scenario(m):
        body, _ = render(exposition, ours)
        assert body == encoder(registry(m)), step
        # A second scrape with nothing changed serves the cached lines: still identical.
        again, _ = render(exposition, ours)
        assert again == body, step


def test_scenario_reaches_every_state() -> None:
    """The byte-identity test above is only as good as its scenario: it must produce escaped
    label values, non-finite values, every reason, hooks, and the removal of series."""
    m = Metrics()
    exposition = Exposition(m)
    bodies = {step: render(exposition, TEXT_0_0_4)[0].decode() for step in scenario(m)}
    body = bodies["every failure reason, hook failures"]
    for escaped in ('\\"', "\\\\", "\\n"):
        assert escaped in body
    assert all(f" {v}\n" in body for v in ("NaN", "+Inf", "-Inf", "1e+22", "1.234567e+06"))
    reasons = {
        dict(labels)["reason"]
        for (name, labels) in samples(body)
        if name == "entra_tokend_token_refresh_failures_total"
    }
    assert reasons == {str(r) for r in Reason}
    assert 'entra_tokend_hook_failures_total{token="t000"} 1.0' in body
    assert 'token="t002"' not in bodies["removed"]
    assert 'token="t002"' in bodies["reloaded"]
    dots = render(exposition, negotiate(ACCEPTS[4]))[0].decode()
    assert "entra__tokend__token__refreshes__total{" in dots  # escaping=dots renames


def test_formats_alternating_share_the_cache_correctly() -> None:
    """More formats than the cache keeps, scraped in turn: each answer is still exact."""
    fmts = formats()[:4]
    m = Metrics()
    exposition = Exposition(m)
    for step in scenario(m):
        for ours, encoder in fmts + fmts[::-1]:
            assert render(exposition, ours)[0] == encoder(registry(m)), (step, ours)
    assert len(exposition.formats_cached) == 2


def test_a_scrape_renders_only_the_tokens_that_changed() -> None:
    m = Metrics()
    exposition = Exposition(m)
    for i in range(300):
        m.token_configured(f"t{i:03d}", "default")
    accept = "application/openmetrics-text;version=1.0.0"
    ours, (encoder, _) = negotiate(accept), choose_encoder(accept)
    render(exposition, ours)
    assert exposition.tokens_rendered == 300
    render(exposition, ours)
    assert exposition.tokens_rendered == 300  # nothing changed: nothing rendered
    m.token_written("t007", expires_on=1_900_000_000.0, now=1_899_996_400.0)
    m.refresh_failed("t123", Reason.THROTTLED)
    m.hook_failed("t200")
    m.token_removed("t299")
    body, _ = render(exposition, ours)
    assert exposition.tokens_rendered == 303
    assert body == encoder(registry(m))
    m.token_configured("t299", "default")  # back, with a fresh record
    assert render(exposition, ours)[0] == encoder(registry(m))
    assert exposition.tokens_rendered == 304
    # Another format has its own cache (and renders everything once).
    render(exposition, TEXT_0_0_4)
    assert exposition.tokens_rendered == 604


def test_render_yields_between_batches_of_tokens() -> None:
    """A first scrape of many tokens lets the event loop run after every RENDER_BATCH tokens;
    a scrape with nothing changed runs in one step."""
    m = Metrics()
    exposition = Exposition(m)
    for i in range(3 * RENDER_BATCH + 1):
        m.token_configured(f"t{i:03d}", "default")
    _, yielded = render(exposition, TEXT_0_0_4)
    assert yielded == 4
    _, yielded = render(exposition, TEXT_0_0_4)
    assert yielded == 0


def test_changes_while_a_render_is_in_progress() -> None:
    """The loop runs between steps: tokens removed, added or changed meanwhile. The render in
    progress shows the tokens configured when it began, each exactly once; the next render
    shows the new state exactly."""
    m = Metrics()
    exposition = Exposition(m)
    names = [f"t{i:03d}" for i in range(3 * RENDER_BATCH)]
    for name in names:
        m.token_configured(name, "default")
    steps = exposition.render(TEXT_0_0_4)
    next(steps)  # the first batch is rendered
    m.token_written(names[0], expires_on=1.0, now=2.0)  # already rendered in this scrape
    m.token_written(names[-1], expires_on=3.0, now=4.0)  # not yet rendered
    m.token_removed(names[-2])
    m.token_configured("newcomer", "default")
    body: bytes | None = None
    while body is None:
        try:
            next(steps)
        except StopIteration as done:
            body = done.value
    got = samples(body.decode())
    expiry = "entra_tokend_token_expiry_timestamp_seconds"
    tokens = [dict(labels)["token"] for (name, labels) in got if name == expiry]
    assert sorted(tokens) == names
    assert got[(expiry, frozenset({("token", names[0])}))] == 0.0  # as it was in batch 1
    assert got[(expiry, frozenset({("token", names[-1])}))] == 3.0
    assert render(exposition, TEXT_0_0_4)[0] == generate_latest(registry(m))
