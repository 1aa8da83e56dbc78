"""On-demand tokens for the managed-identity endpoint: one runner per (identity, scope).

``OnDemandTokens.get`` is the endpoint's ``TokenProvider``. It reads a ``Lookup`` — the
identities, their credential sources, the file tokens it may share by (identity, scope), the
policy — that a reload replaces whole (``replace``). For an (identity, scope) a configured token
file already keeps fresh it serves that runner's latest token (the file's output is wrapped in a
``MemoryOutput``, which also holds a token adopted from disk): one Entra request feeds the file
and the endpoint. Otherwise the first request builds a runner (``runner.build``, like every
other token) whose output is a ``MemoryOutput``; concurrent first requests all wait for its
single exchange (single-flight). It keeps the token fresh while requests come, and retires after
``idle_timeout`` seconds without one, or at a reload whose allow-list no longer admits it.

On-demand runners are capped (``runner_cap``): two per ``[endpoint] allow`` entry — the scope
with and without one trailing slash, the only two ``endpoint.core.resolve`` lets through — so
the number of runners (each an Entra request and a metric series) stays bounded even if some
future request form slipped past the allow-list's normalisation. A request that would start one
more is answered ``TokenUnavailable`` (the endpoint's 5xx) and starts nothing.

What a request gets is ``scheduler.serve_decision``'s call: the held token while it has more
than ``scheduler.required_lifetime`` left; else it waits (at most ``WAIT_TIMEOUT``) for an
attempt in flight, or forces one (never more often than ``min_refresh_interval``); and when the
runner's last attempt failed and none is in flight it fails fast — ``TokenUnavailable`` at once,
carrying the failure's ``Reason``, whether it is a configuration error, and a safe detail.

``start_endpoint`` wires the provider, ``endpoint.Endpoint`` and its own ``HttpServer``; the
daemon's lifecycle only starts the result and calls its ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from entra_tokend.endpoint import Endpoint
from entra_tokend.httpserver import HttpServer, Limits, bound_port
from entra_tokend.logging import get_logger
from entra_tokend.metrics import Metrics
from entra_tokend.model import (
    AccessToken,
    EndpointSpec,
    Grant,
    Identity,
    OutputSpec,
    Policy,
    TokenSpec,
    resource_key,
)
from entra_tokend.outputs.memory import MemoryOutput
from entra_tokend.ports import AssertionProvider, Exchange, Failed, TokenUnavailable
from entra_tokend.runner import Deps, TokenRunner, build
from entra_tokend.scheduler import MIN_SERVED_LIFETIME, Serve, serve_decision

__all__ = [
    "MIN_SERVED_LIFETIME",
    "WAIT_TIMEOUT",
    "EndpointService",
    "Lookup",
    "OnDemandTokens",
    "SharedToken",
    "admitted",
    "runner_cap",
    "start_endpoint",
]

WAIT_TIMEOUT = 30.0
"""Seconds a request waits for an attempt in flight before it gets an error."""


@dataclass(frozen=True)
class SharedToken:
    """A file token the endpoint may serve: its runner and the memory wrapping its file."""

    runner: TokenRunner
    memory: MemoryOutput


@dataclass(frozen=True)
class Lookup:
    """What the endpoint reads at each request; a reload builds a new one and ``replace``s it.

    ``identities`` and ``sources`` by identity name; ``shared`` by (identity name, scope), the
    first configured file token of each; ``policy`` the refresh policy of new runners;
    ``endpoint`` the ``[endpoint]`` settings in force (allow-list, selectors, secret, ``imds``;
    None once a reload removed the table: every request is then answered 404).
    """

    identities: Mapping[str, Identity]
    sources: Mapping[str, AssertionProvider]
    shared: Mapping[tuple[str, str], SharedToken]
    policy: Policy
    endpoint: EndpointSpec | None = None


def on_demand_name(identity: str, scope: str) -> str:
    """The ``token`` label and log name of an on-demand token: ``endpoint:<identity>:<scope>``
    (bounded by the allow list)."""
    return f"endpoint:{identity}:{scope}"


def runner_cap(endpoint: EndpointSpec | None) -> int | None:
    """The most on-demand runners there may be: 2 × the ``[endpoint] allow`` entries (each
    entry is one (resource, identity) pair, whose scopes are the resource with and without one
    trailing slash). None — no cap — without an ``EndpointSpec`` (then the endpoint answers 404
    before any provider call; only in-process tests use a provider that way)."""
    return None if endpoint is None else 2 * len(endpoint.grants)


def admitted(endpoint: EndpointSpec | None, identity: str, scope: str) -> bool:
    """Whether the allow-list admits (identity, scope) — always without an ``EndpointSpec``."""
    return endpoint is None or Grant(resource_key(scope), identity) in endpoint.grants


@dataclass
class _Entry:
    runner: TokenRunner
    memory: MemoryOutput
    last_used: float


def _failed(failure: Failed) -> TokenUnavailable:
    return TokenUnavailable(
        f"the token could not be obtained ({failure.reason}); see the daemon's log",
        reason=failure.reason,
        configuration=failure.configuration,
        detail=failure.detail,
    )


class OnDemandTokens:
    """The endpoint's ``TokenProvider`` (see the module docstring). ``deps`` are the runners'
    shared collaborators (its ``policy`` is replaced by the lookup's); ``exchange`` the stage
    on-demand runners use."""

    def __init__(
        self, lookup: Lookup, *, deps: Deps, exchange: Exchange, idle_timeout: float
    ) -> None:
        self.lookup = lookup
        self.idle_timeout = idle_timeout
        self._deps = deps
        self.clock = deps.clock
        self._exchange = exchange
        self._log = get_logger()
        self.entries: dict[tuple[str, str], _Entry] = {}

    def identities(self) -> Mapping[str, Identity]:
        """The configured identities now (name → Identity), for the endpoint."""
        return self.lookup.identities

    def endpoint_spec(self) -> EndpointSpec | None:
        """The ``[endpoint]`` settings now, for the endpoint."""
        return self.lookup.endpoint

    def replace(self, lookup: Lookup) -> None:
        """Use ``lookup`` from now on (a reload); retire on-demand runners whose identity's
        source changed (they restart on demand) or that the new allow-list no longer admits
        (they would never be served again, yet hold a place under ``runner_cap``)."""
        self.lookup = lookup
        for key, entry in list(self.entries.items()):
            moved = lookup.sources.get(key[0]) is not entry.runner.source
            if moved or not admitted(lookup.endpoint, *key):
                self._retire(key)

    def _start(self, identity: str, scope: str) -> _Entry:
        source = self.lookup.sources.get(identity)
        if source is None:
            raise TokenUnavailable("identity unavailable")
        cap = runner_cap(self.lookup.endpoint)
        if cap is not None and len(self.entries) >= cap:
            # Unreachable while resolve admits two scopes per grant (and a reload retires what
            # the allow-list dropped): a defence against an unbounded number of runners.
            raise TokenUnavailable(f"too many on-demand tokens (at most {cap})")
        name = on_demand_name(identity, scope)
        spec = TokenSpec(name=name, scope=scope, identity=identity, output=OutputSpec(Path(name)))
        memory = MemoryOutput(clock=self.clock)
        deps = replace(self._deps, policy=self.lookup.policy)
        runner = build(spec, deps, source, self._exchange, memory, listeners=[memory.observe])
        entry = _Entry(runner, memory, self.clock.monotonic())
        self.entries[(identity, scope)] = entry
        runner.start()
        self._log.info("on-demand token started", token=name)
        return entry

    def _retire(self, key: tuple[str, str]) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            entry.runner.stop()
            self._deps.metrics.token_removed(entry.runner.spec.name)
            self._log.info("on-demand token retired", token=entry.runner.spec.name)

    def _token_for(self, identity: str, scope: str) -> tuple[TokenRunner, MemoryOutput]:
        shared = self.lookup.shared.get((identity, scope))
        if shared is not None:
            return shared.runner, shared.memory
        entry = self.entries.get((identity, scope)) or self._start(identity, scope)
        entry.last_used = self.clock.monotonic()
        return entry.runner, entry.memory

    async def get(self, identity: str, scope: str) -> AccessToken:
        """A token for (identity, scope) with more than ``required_lifetime`` left. Raises
        ``TokenUnavailable`` (fixed texts, no secrets): at once when the last attempt failed
        and none is in flight, after ``WAIT_TIMEOUT`` seconds when one never ends."""
        runner, memory = self._token_for(identity, scope)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT
        while True:
            token = memory.latest
            delivered = memory.delivered_at
            since = self.clock.monotonic() - delivered if delivered is not None else None
            verdict = serve_decision(
                left=token.expires_on - self.clock.wall() if token is not None else None,
                lifetime=token.expires_in if token is not None else None,
                attempting=runner.attempting,
                due=runner.schedule.due_in() <= 0,
                failed=memory.failure is not None,
                since_delivery=since,
                policy=self.lookup.policy,
            )
            if verdict is Serve.SERVE:
                assert token is not None  # serve_decision serves only a held token
                return token
            if verdict is Serve.FAIL:
                assert memory.failure is not None
                raise _failed(memory.failure)
            if verdict is Serve.TOO_BRIEF:
                raise TokenUnavailable("the issued token lives too briefly to serve")
            if verdict is Serve.REFRESH:
                runner.refresh_now()
            if not await memory.changed(max(0.0, deadline - loop.time())):
                raise TokenUnavailable("timed out waiting for the token")

    def sweep(self) -> None:
        """Retire every on-demand runner unused for ``idle_timeout`` seconds."""
        now = self.clock.monotonic()
        for key, entry in list(self.entries.items()):
            if now - entry.last_used >= self.idle_timeout:
                self._retire(key)

    async def sweeper(self) -> None:
        """Run ``sweep`` forever, a few times per ``idle_timeout``."""
        while True:
            await asyncio.sleep(max(1.0, self.idle_timeout / 4))
            self.sweep()

    def close(self) -> None:
        """Stop every on-demand runner (shutdown)."""
        for key in list(self.entries):
            self._retire(key)


class EndpointService:
    """The running endpoint: its listener, provider and sweeper. ``stop`` ends all three."""

    def __init__(self, provider: OnDemandTokens, http: HttpServer, port: int) -> None:
        self.provider = provider
        self.port = port
        self._http = http
        self._sweeper = asyncio.create_task(provider.sweeper(), name="endpoint-sweeper")

    async def stop(self) -> None:
        """Close the listener, stop the sweeper and every on-demand runner."""
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        await self._http.stop()
        self.provider.close()


ENDPOINT_LIMITS = Limits(max_head_bytes=8192, read_timeout=10.0, max_connections=256)
"""The endpoint listener's bounds (see ``httpserver``): a burst of first requests holds one
connection each while the token is obtained (100 at once is a tested case); idle ones are
evicted oldest first at the limit."""


async def start_endpoint(
    spec: EndpointSpec, provider: OnDemandTokens, metrics: Metrics
) -> EndpointService:
    """Listen on ``spec.listen`` with the endpoint's own ``HttpServer`` (the address is fixed
    for the listener's life; every other setting is read from the provider's lookup at each
    request). Raises OSError."""
    endpoint = Endpoint(
        provider.endpoint_spec, provider.identities, provider, metrics, clock=provider.clock
    )
    http = HttpServer(endpoint.routes(), lambda: ENDPOINT_LIMITS)
    host, port = spec.listen
    server = await http.start(host, port)
    return EndpointService(provider, http, bound_port(server))
