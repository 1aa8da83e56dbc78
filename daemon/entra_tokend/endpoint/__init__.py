"""The local managed-identity endpoint: App Service 2019-08-01 and 2017-09-01 and, opt-in, IMDS,
on one loopback listener.

Modules: ``core`` (the allow-list, identity selectors, the scope sent to Entra, refusals and
``TokenUnavailable``), ``params`` (query-string rules every protocol applies), ``guards``
(``Host`` and the browser and proxy headers a protocol refuses), and one adapter per protocol
that only parses requests and renders answers — ``appservice`` (both versions, ``/msi/token``)
and ``imds`` (``/metadata/identity/oauth2/token``). Single flight, the token cache and the cap
on on-demand runners are the provider's (``ondemand.OnDemandTokens``).

A request meets, in order: the protocol's checks (``guards``: a loopback ``Host``, no
browser header and, for IMDS, no proxy header; the secret header or IMDS's ``Metadata``;
``api-version``, the query string, one selector) → ``core.resolve`` (the resource is an
absolute URI without an empty path segment; the selector names a configured identity; the
allow-list admits the resource for that identity) → the provider (``TokenUnavailable`` with
``configuration`` → 4xx at once, otherwise 5xx) → the protocol's answer. Denied requests are
logged with the resource, selector and the allow entry that would admit them — never the
secret header, a token or the raw query — at most one line per (kind, resource label) per
``DENIED_LOG_INTERVAL`` whatever the peer.

The configuration is read per request through callables, so a reload (SIGHUP) that replaces the
``EndpointSpec`` (allow-list, ``imds``, secret) or the identities (selectors) applies to the
next request; the listen address stays until a restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

from entra_tokend.endpoint import appservice, imds
from entra_tokend.endpoint.appservice import API_VERSION, PATH
from entra_tokend.endpoint.core import (
    RESULT,
    Ask,
    Kind,
    Refusal,
    TokenProvider,
    refusal_for,
    resolve,
)
from entra_tokend.httpserver import Handler, Request, Response
from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.metrics import Metrics
from entra_tokend.model import AccessToken, Clock, EndpointSpec, Identity, SystemClock, scope_of
from entra_tokend.ports import TokenUnavailable

__all__ = [
    "API_VERSION",
    "DENIED_LOG_INTERVAL",
    "IMDS_PATH",
    "PATH",
    "Endpoint",
    "TokenProvider",
    "TokenUnavailable",
    "scope_of",
]

IMDS_PATH = imds.PATH
DENIED_LOG_INTERVAL = 10.0
"""Seconds between log lines for refused requests of one (kind, resource label)."""


class _Adapter(Protocol):
    name: str

    def parse(self, request: Request, secret: bytes) -> Ask | Refusal: ...

    def render(
        self, request: Request, ask: Ask, token: AccessToken, identity: Identity
    ) -> Response: ...

    def refuse(self, request: Request, refusal: Refusal) -> Response: ...


SpecSource = EndpointSpec | Callable[[], EndpointSpec | None]
"""The endpoint's configuration, or a callable returning the current one (reloads)."""


class Endpoint:
    """Answers the endpoint's paths (``routes``).

    ``spec`` is the ``EndpointSpec`` or a callable returning the current one (read per
    request: allow-list, ``imds``, secret; None — the endpoint was removed by a reload — is
    answered 404); ``identities`` returns the configured identities (name → Identity) per
    request; ``provider`` gives tokens; ``clock`` times requests and the denied-request log
    interval (monotonic) and IMDS's ``expires_in`` (wall).
    """

    def __init__(
        self,
        spec: SpecSource,
        identities: Callable[[], Mapping[str, Identity]],
        provider: TokenProvider,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._spec: Callable[[], EndpointSpec | None] = spec if callable(spec) else (lambda: spec)
        self._identities = identities
        self._provider = provider
        self._metrics = metrics
        self._appservice = appservice.AppService()
        self._imds = imds.Imds(self._clock.wall)
        self._denied_log: dict[tuple[str, str], tuple[float, int]] = {}
        self._seen: EndpointSpec | None = None
        self._log = get_logger()
        self._current()

    @property
    def spec(self) -> EndpointSpec | None:
        """The configuration in force now."""
        return self._spec()

    def _current(self) -> EndpointSpec | None:
        spec = self._spec()
        if spec is not None and spec is not self._seen:
            remember_secret(spec.secret, pin=True)  # redacted from every log line, always
            self._metrics.endpoint_configured(sorted({g.resource for g in spec.grants}))
            self._seen = spec
        return spec

    def routes(self) -> dict[str, Handler]:
        """Path → handler, for ``httpserver.HttpServer`` (IMDS's path answers 404 unless
        ``imds`` is on)."""
        return {PATH: self.handle, IMDS_PATH: self.handle_imds}

    async def handle(self, request: Request) -> Response:
        """One App Service request (either version)."""
        return await self._answer(request, self._appservice)

    async def handle_imds(self, request: Request) -> Response:
        """One IMDS request."""
        return await self._answer(request, self._imds)

    async def _answer(self, request: Request, adapter: _Adapter) -> Response:
        started = self._clock.monotonic()
        spec = self._current()
        if spec is None or (adapter is self._imds and not spec.imds):
            return Response(404, b"not found\n")
        outcome = await self._decide(request, adapter, spec)
        if isinstance(outcome, Refusal):
            response = self._refused(request, adapter, outcome)
            result, label = RESULT[outcome.kind], outcome.label
        else:
            (response, label), result = outcome, "ok"
        self._metrics.endpoint_request(result, label, self._clock.monotonic() - started)
        return response

    async def _decide(
        self, request: Request, adapter: _Adapter, spec: EndpointSpec
    ) -> tuple[Response, str] | Refusal:
        ask = adapter.parse(request, spec.secret.encode())
        if isinstance(ask, Refusal):
            return ask
        resolved = resolve(ask, self._identities(), spec.grants)
        if isinstance(resolved, Refusal):
            return resolved
        identity, scope, label = resolved
        try:
            token = await self._provider.get(identity.name, scope)
        except TokenUnavailable as exc:
            return refusal_for(exc, label)
        return adapter.render(request, ask, token, identity), label

    def _refused(self, request: Request, adapter: _Adapter, refusal: Refusal) -> Response:
        response = adapter.refuse(request, refusal)
        fields: dict[str, object] = {
            **refusal.log,
            "peer": request.peer,
            "protocol": adapter.name,
            "status": response.status,
            "reason": refusal.message,
        }
        failed = refusal.kind in (Kind.CONFIGURATION, Kind.UNAVAILABLE)
        # One line per (kind, resource label) per DENIED_LOG_INTERVAL, whatever the peer: a
        # flood of bad requests from many addresses, or an app retrying a failure that is
        # answered at once, must not flood the log (each is still counted in the requests
        # metric). Labels are bounded by the allow list.
        now = self._clock.monotonic()
        key = (str(refusal.kind), refusal.label)
        last, suppressed = self._denied_log.get(key, (-math.inf, 0))
        if now - last < DENIED_LOG_INTERVAL:
            self._denied_log[key] = (last, suppressed + 1)
            return response
        if suppressed:
            fields["suppressed"] = suppressed
        self._log.warning(
            "endpoint request failed" if failed else "endpoint request denied", **fields
        )
        self._denied_log[key] = (now, 0)
        return response
