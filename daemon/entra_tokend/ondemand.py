"""On-demand tokens for the managed-identity endpoint: one runner per (identity, scope).

``OnDemandTokens.get`` is the endpoint's ``TokenProvider``. For an (identity, scope) that a
configured token file already keeps fresh, it serves that runner's latest token (the daemon
wraps each file output in a ``MemoryOutput``): one Entra request feeds the file and the
endpoint. Otherwise the first request starts a ``TokenRunner`` whose output is a
``MemoryOutput``; concurrent first requests all wait for that runner's single exchange
(single-flight). The runner keeps the token fresh on its usual schedule while requests come, and
retires after ``idle_timeout`` seconds without one.

A served token always has more than ``MIN_SERVED_LIFETIME`` seconds left: Azure SDKs refresh a
token once 300 s or less remain (azure-identity ``DEFAULT_REFRESH_OFFSET``), so a token closer
to expiry would make every SDK call come back. (Tokens granted for less than twice that — only
emulators and test tenants do — need half their lifetime left: ``required_lifetime``.) When the
cached token is that close, the runner is asked to refresh now (once, however many requests
ask) and the requests wait for it. A refresh is never forced more often than
``min_refresh_interval``, nor while the runner is backing off after a failure; such requests
get ``TokenUnavailable`` (or, while the runner backs off, the still-valid token), never a loop.

``start_endpoint`` wires it all (provider, ``endpoint.Endpoint``, its own ``HttpServer``) for
the daemon, whose lifecycle only starts and stops the result.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from entra_tokend.credentials import AssertionProvider
from entra_tokend.endpoint import Endpoint, TokenUnavailable
from entra_tokend.httpserver import HttpServer, Limits, bound_port
from entra_tokend.logging import get_logger
from entra_tokend.metrics import Metrics
from entra_tokend.model import AccessToken, Clock, EndpointSpec, Identity, OutputSpec, TokenSpec
from entra_tokend.outputs.memory import MemoryOutput
from entra_tokend.readiness import Readiness
from entra_tokend.runner import Exchange, State, TokenRunner
from entra_tokend.scheduler import Policy, TokenSchedule

MIN_SERVED_LIFETIME = 330.0
"""Seconds a served token must still live: the SDKs' 300 s refresh offset plus 30 s margin."""
WAIT_TIMEOUT = 30.0
"""Seconds a request waits for a token being obtained before it gets an error."""


def required_lifetime(token: AccessToken) -> float:
    """Seconds ``token`` must still live to be served: ``MIN_SERVED_LIFETIME``, or half its
    granted lifetime when the issuer grants less than twice that (an emulator, a test tenant):
    no token could meet the SDKs' offset then, and serving the cached one costs no Entra
    request, whereas refusing would fail every call."""
    return min(MIN_SERVED_LIFETIME, token.expires_in / 2)


SharedFn = Callable[[str, str], tuple[TokenRunner, MemoryOutput] | None]
"""(identity, scope) → a file token's runner and its recording output, if one exists."""


@dataclass
class _Entry:
    runner: TokenRunner
    output: MemoryOutput
    last_used: float


def on_demand_name(identity: str, scope: str) -> str:
    """The ``token`` label and log name of an on-demand token: ``endpoint:<identity>:<scope>``
    (bounded by the allow list)."""
    return f"endpoint:{identity}:{scope}"


class OnDemandTokens:
    """The endpoint's ``TokenProvider``. Collaborators are the daemon's (see module docstring);
    ``source_for`` returns the identity's current credential source."""

    def __init__(
        self,
        *,
        idle_timeout: float,
        policy: Callable[[], Policy],
        clock: Clock,
        exchange: Exchange,
        metrics: Metrics,
        readiness: Readiness,
        limiter: asyncio.Semaphore,
        source_for: Callable[[str], AssertionProvider | None],
        shared: SharedFn,
    ) -> None:
        self.idle_timeout = idle_timeout
        self._policy = policy
        self._clock = clock
        self._exchange = exchange
        self._metrics = metrics
        self._readiness = readiness
        self._limiter = limiter
        self._source_for = source_for
        self._shared = shared
        self._log = get_logger()
        self.entries: dict[tuple[str, str], _Entry] = {}

    def _start(self, identity: str, scope: str) -> _Entry:
        source = self._source_for(identity)
        if source is None:
            raise TokenUnavailable("identity unavailable")
        name = on_demand_name(identity, scope)
        spec = TokenSpec(name=name, scope=scope, identity=identity, output=OutputSpec(Path(name)))
        output = MemoryOutput(monotonic=self._clock.monotonic)
        runner = TokenRunner(
            spec,
            schedule=TokenSchedule(self._policy(), self._clock),
            source=source,
            exchange=self._exchange,
            output=output,
            metrics=self._metrics,
            readiness=self._readiness,
            clock=self._clock,
            limiter=self._limiter,
            on_attempt=lambda _: output.attempt_finished(),
        )
        entry = _Entry(runner, output, self._clock.monotonic())
        self.entries[(identity, scope)] = entry
        runner.start()
        self._log.info("on-demand token started", token=name)
        return entry

    def _retire(self, key: tuple[str, str]) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            entry.runner.stop()
            self._metrics.token_removed(entry.runner.spec.name)
            self._log.info("on-demand token retired", token=entry.runner.spec.name)

    async def get(self, identity: str, scope: str) -> AccessToken:
        """A token for (identity, scope) with more than ``MIN_SERVED_LIFETIME`` s left.
        Raises ``TokenUnavailable`` (fixed texts, no secrets)."""
        shared = self._shared(identity, scope)
        if shared is not None:
            runner, output = shared
        else:
            entry = self.entries.get((identity, scope)) or self._start(identity, scope)
            entry.last_used = self._clock.monotonic()
            runner, output = entry.runner, entry.output
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT
        attempts = output.attempts
        while True:
            token = output.latest
            left = token.expires_on - self._clock.wall() if token is not None else 0.0
            if token is not None and left > required_lifetime(token):
                return token
            if output.attempts != attempts and runner.state is not State.OK:
                # The attempt we waited for failed: answer now; the runner backs off.
                if token is not None and left > 0:
                    return token  # still valid: better than an error while Entra is down
                raise TokenUnavailable("the token could not be obtained; see the daemon's log")
            if token is not None:
                self._force_refresh(runner, output, self._clock.monotonic())
            if not await output.changed(max(0.0, deadline - loop.time())):
                raise TokenUnavailable("timed out waiting for the token")

    def _force_refresh(self, runner: TokenRunner, output: MemoryOutput, now: float) -> None:
        """Ask the runner for a token now, once per attempt, never more often than
        ``min_refresh_interval`` and never while it backs off."""
        if output.refresh_requested or runner.state is State.FAILING:
            return
        delivered = output.delivered_at
        if delivered is not None and now - delivered < self._policy().min_refresh_interval:
            raise TokenUnavailable("the issued token lives too briefly to serve")
        output.refresh_requested = True
        runner.refresh_now()

    def sweep(self) -> None:
        """Retire every on-demand runner unused for ``idle_timeout`` seconds."""
        now = self._clock.monotonic()
        for key, entry in list(self.entries.items()):
            if now - entry.last_used >= self.idle_timeout:
                self._retire(key)

    def drop_stale_sources(self) -> None:
        """After a reload: retire runners whose identity changed (they restart on demand)."""
        for key, entry in list(self.entries.items()):
            if self._source_for(key[0]) is not entry.runner.source:
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
    spec: EndpointSpec,
    identities: Callable[[], Mapping[str, Identity]],
    provider: OnDemandTokens,
    metrics: Metrics,
) -> EndpointService:
    """Listen on ``spec.listen`` with the endpoint's own ``HttpServer``. Raises OSError."""
    endpoint = Endpoint(spec, identities, provider, metrics)
    http = HttpServer(endpoint.routes(), lambda: ENDPOINT_LIMITS)
    host, port = spec.listen
    server = await http.start(host, port)
    return EndpointService(provider, http, bound_port(server))
