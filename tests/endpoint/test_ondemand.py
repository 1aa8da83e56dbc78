"""On-demand tokens in process: single-flight, the served-lifetime rule, idle retirement,
failing fast with the failure's reason, and a retry at once when the projected token returns.

A fake clock and a fake exchange (tests/support's) stand in for time and Entra; the
runners, the in-memory output and the provider are the real ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from entra_tokend.exchange import ServerError
from entra_tokend.metrics import Metrics
from entra_tokend.model import EndpointSpec, Grant, Reason
from entra_tokend.ondemand import MIN_SERVED_LIFETIME, Lookup, OnDemandTokens
from entra_tokend.outputs.memory import MemoryOutput
from entra_tokend.ports import Expired, Failed, TokenUnavailable
from entra_tokend.readiness import Readiness
from entra_tokend.runner import Deps
from support.fakes import POLICY, FakeClock, FakeExchange, FakeSource, config_error, make_assertion

VAULT = "https://vault.azure.net/.default"
STORAGE = "https://storage.azure.com/.default"
Scenario = Callable[[], Coroutine[Any, Any, None]]


def in_loop(scenario: Scenario) -> Callable[[], None]:
    """Run an async scenario as a plain test (no asyncio plugin here)."""

    @functools.wraps(scenario)
    def test() -> None:
        asyncio.run(scenario())

    return test


def provider(
    clock: FakeClock, exchange: FakeExchange, source: FakeSource | None = None, **kw: Any
) -> OnDemandTokens:
    source = source or FakeSource()
    metrics = Metrics()
    deps = Deps(metrics, Readiness(metrics), clock, asyncio.Semaphore(4), POLICY)
    lookup = Lookup({"default": source.identity}, {"default": source}, {}, POLICY)
    return OnDemandTokens(
        lookup, deps=deps, exchange=exchange, idle_timeout=kw.get("idle_timeout", 60.0)
    )


@in_loop
async def test_hundred_concurrent_first_requests_make_one_exchange() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    exchange.gate = asyncio.Event()  # hold the exchange until every request is waiting
    tokens = provider(clock, exchange)
    requests = [asyncio.create_task(tokens.get("default", VAULT)) for _ in range(100)]
    await exchange.entered.wait()
    await asyncio.sleep(0)
    exchange.gate.set()
    served = await asyncio.gather(*requests)
    assert len(exchange.sent) == 1
    assert {t.token for t in served} == {"token-1"}
    tokens.close()


@in_loop
async def test_token_too_close_to_expiry_is_refreshed_before_serving() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    tokens = provider(clock, exchange)
    first = await tokens.get("default", VAULT)
    clock.advance(first.expires_on - clock.wall() - MIN_SERVED_LIFETIME + 1)  # 329 s left
    again = await asyncio.gather(*(tokens.get("default", VAULT) for _ in range(10)))
    assert {t.token for t in again} == {"token-2"}  # one forced refresh for ten requests
    assert len(exchange.sent) == 2
    assert again[0].expires_on - clock.wall() > MIN_SERVED_LIFETIME
    tokens.close()


@in_loop
async def test_a_short_lived_token_is_never_a_refresh_loop() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    exchange.script = [200.0, 200.0, 200.0]  # shorter than any SDK offset (an emulator)
    tokens = provider(clock, exchange)
    first = await tokens.get("default", VAULT)  # half its lifetime left is enough then
    for _ in range(5):
        assert (await tokens.get("default", VAULT)).token == first.token
    assert len(exchange.sent) == 1
    clock.advance(101)  # 99 s left: less than half of 200 s, refreshed before serving
    assert (await tokens.get("default", VAULT)).token != first.token
    assert len(exchange.sent) == 2
    tokens.close()


@in_loop
async def test_failed_first_exchange_answers_with_an_error() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    exchange.script = [ServerError("HTTP 503", request_id="r1")]
    tokens = provider(clock, exchange)
    with pytest.raises(TokenUnavailable) as info:
        await tokens.get("default", VAULT)
    assert "token-" not in str(info.value)
    tokens.close()


@in_loop
async def test_idle_runner_retires_and_restarts_on_demand() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    tokens = provider(clock, exchange, idle_timeout=60.0)
    await tokens.get("default", VAULT)
    clock.advance(59)
    tokens.sweep()
    assert tokens.entries  # used 59 s ago: kept
    await tokens.get("default", VAULT)  # a use resets the idle time (cached: no exchange)
    clock.advance(59)
    tokens.sweep()
    assert tokens.entries
    assert len(exchange.sent) == 1
    clock.advance(1)
    tokens.sweep()
    assert not tokens.entries
    await tokens.get("default", VAULT)
    assert len(exchange.sent) == 2
    tokens.close()


@in_loop
async def test_unknown_identity_is_unavailable() -> None:
    clock = FakeClock()
    tokens = provider(clock, FakeExchange(clock))
    with pytest.raises(TokenUnavailable):
        await tokens.get("nobody", VAULT)


@in_loop
async def test_a_token_that_failed_for_want_of_the_projected_token_is_retried_when_it_returns() -> (
    None
):
    clock = FakeClock()
    exchange = FakeExchange(clock)
    source = FakeSource()
    source.assertion = None  # kubelet has not (re)written the projected token yet
    tokens = provider(clock, exchange, source)
    with pytest.raises(TokenUnavailable) as info:
        await tokens.get("default", VAULT)
    assert info.value.reason is Reason.ASSERTION_UNAVAILABLE
    assert exchange.sent == []
    source.rotate(make_assertion(1))  # the watcher sees it back; the clock has not moved
    token = await tokens.get("default", VAULT)
    assert exchange.sent == [make_assertion(1).token]
    assert token.token == "token-1"
    tokens.close()


@in_loop
async def test_a_known_failure_is_answered_at_once_with_its_reason() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    exchange.script = [config_error()]
    tokens = provider(clock, exchange)
    with pytest.raises(TokenUnavailable) as first:
        await tokens.get("default", VAULT)
    # The runner backs off (a minute at least); a request now neither waits nor asks Entra.
    request = asyncio.create_task(tokens.get("default", VAULT))
    await asyncio.sleep(0)  # one step of the loop: an answer that needs no waiting
    assert request.done()
    with pytest.raises(TokenUnavailable) as again:
        request.result()
    for failure in (first.value, again.value):
        assert failure.reason is Reason.CLIENT_ERROR
        assert failure.configuration
        assert failure.detail.startswith("AADSTS700016")
    assert len(exchange.sent) == 1
    tokens.close()


@in_loop
async def test_a_reload_that_changes_the_identity_retires_its_on_demand_runners() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    tokens = provider(clock, exchange)
    await tokens.get("default", VAULT)
    unchanged = tokens.lookup
    tokens.replace(Lookup(unchanged.identities, dict(unchanged.sources), {}, POLICY))
    assert tokens.entries  # same source: the runner and its token stay
    moved = FakeSource()
    tokens.replace(Lookup({"default": moved.identity}, {"default": moved}, {}, POLICY))
    assert not tokens.entries
    await tokens.get("default", VAULT)  # restarts on demand with the new source
    assert tokens.entries[("default", VAULT)].runner.source is moved
    assert len(exchange.sent) == 2
    tokens.close()


def test_an_expiry_does_not_hide_the_failure_that_caused_it() -> None:
    memory = MemoryOutput(clock=FakeClock())
    failure = Failed("t", Reason.SERVER_ERROR, "HTTP 503")
    memory.observe(failure)
    memory.observe(Expired("t"))
    assert memory.failure == failure  # still answered at once, not a forced refresh


def allow(tokens: OnDemandTokens, *resources: str) -> None:
    """Reload ``tokens`` with an ``[endpoint]`` whose allow-list admits ``resources`` for the
    default identity."""
    grants = tuple(Grant(resource, "default") for resource in resources)
    spec = EndpointSpec(("127.0.0.1", 0), "s" * 16, "secret_env = S", grants)
    tokens.replace(dataclasses.replace(tokens.lookup, endpoint=spec))


@in_loop
async def test_on_demand_runners_are_capped_at_two_per_allow_entry() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    tokens = provider(clock, exchange)
    allow(tokens, "https://vault.azure.net")
    await tokens.get("default", "https://vault.azure.net/.default")
    await tokens.get("default", "https://vault.azure.net//.default")
    # A third scope of the one entry (resolve refuses this form; the cap is the defence
    # behind it): no runner starts and Entra is not asked.
    with pytest.raises(TokenUnavailable, match="too many on-demand tokens"):
        await tokens.get("default", "https://vault.azure.net///.default")
    assert len(tokens.entries) == 2
    assert len(exchange.sent) == 2
    tokens.close()


@in_loop
async def test_a_reload_that_drops_an_allow_entry_retires_its_runners() -> None:
    clock = FakeClock()
    exchange = FakeExchange(clock)
    tokens = provider(clock, exchange)
    allow(tokens, "https://vault.azure.net", "https://storage.azure.com")
    for scope in (VAULT, "https://vault.azure.net//.default", STORAGE):
        await tokens.get("default", scope)
    allow(tokens, "https://storage.azure.com")
    assert set(tokens.entries) == {("default", STORAGE)}  # the vault runners are gone
    await tokens.get("default", "https://storage.azure.com//.default")  # room under the cap
    assert len(tokens.entries) == 2
    tokens.close()
