"""The local managed-identity endpoint: the App Service protocol (2019-08-01) on loopback.

Azure SDKs and MSAL, when ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` are set (and
``IDENTITY_SERVER_THUMBPRINT`` is not), send::

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>[&client_id=<id>]
    X-IDENTITY-HEADER: <IDENTITY_HEADER>

and read a JSON body ``{"access_token", "expires_on" (unix seconds as a string), "resource",
"token_type", "client_id"}``. Sources read for the shapes (azure-identity 1.27 and MSAL Python
1.39, as installed here, and @azure/identity 4.13 with @azure/msal-node from npm):

- MSAL Python ``msal/managed_identity.py`` ``_obtain_token_on_app_service``: the request above
  (plus ``Metadata: true``); success needs ``access_token`` and ``expires_on``; any other body is
  an error whose text is built from its ``statusCode`` and ``message`` fields — so our error
  bodies are ``{"statusCode": N, "message": "..."}``; a non-JSON body raises in MSAL. The same
  module picks Service Fabric instead whenever ``IDENTITY_SERVER_THUMBPRINT`` is set.
- azure-identity ``_credentials/app_service.py``: the same request through MSAL's client
  (``MsalManagedIdentityClient``); it turns a scope into a resource by dropping ``/.default``.
- @azure/msal-node ``src/client/ManagedIdentitySources/AppService.ts`` and
  ``BaseManagedIdentitySource.ts`` (what @azure/identity 4.13 delegates to): the same request;
  ``expires_on`` read as unix seconds (or ISO 8601); an error's text from ``message``.

Decisions, in the order a request meets them: a missing or wrong ``X-IDENTITY-HEADER`` → 401
(compared with ``hmac.compare_digest``); an ``api-version`` other than 2019-08-01 → 400; no
``resource``, or ``mi_res_id``/``object_id``/``principal_id`` (identities are selected by
``client_id`` only) → 400; a ``client_id`` that is no configured identity's → 400; a resource
(with or without ``/.default`` or a trailing slash) not in ``allow`` for the identity → 403;
no token obtainable → 500. Denied requests are logged once each with the peer and the reason —
never the header, a token or the query.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Mapping
from typing import Protocol

from entra_tokend.httpserver import Handler, Request, Response
from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.metrics import Metrics
from entra_tokend.model import (
    AccessToken,
    Clock,
    EndpointSpec,
    Identity,
    SystemClock,
    resource_key,
    scope_of,
)
from entra_tokend.ports import TokenUnavailable

API_VERSION = "2019-08-01"
PATH = "/msi/token"
DENIED_LOG_INTERVAL = 10.0
"""Seconds between log lines for denied requests of one (peer host, reason)."""
"""The endpoint's path: ``IDENTITY_ENDPOINT=http://127.0.0.1:PORT/msi/token`` (App Service's)."""
HEADER = "x-identity-header"
UNSUPPORTED_SELECTORS = ("mi_res_id", "msi_res_id", "object_id", "principal_id")


class TokenProvider(Protocol):
    """Where the endpoint gets tokens (``ondemand.OnDemandTokens``)."""

    async def get(self, identity: str, scope: str) -> AccessToken:
        """A token for (identity, scope) with more than ``ondemand.MIN_SERVED_LIFETIME`` seconds
        left. Raises ``TokenUnavailable``."""
        ...


def _error(status: int, message: str) -> Response:
    body = json.dumps({"statusCode": status, "message": message}).encode()
    return Response(status, body, "application/json")


class Endpoint:
    """Answers ``GET /msi/token``; ``identities`` returns the configured identities (name →
    Identity) at each request, so a reload's changes apply; ``clock`` times requests and the
    denied-request log interval."""

    def __init__(
        self,
        spec: EndpointSpec,
        identities: Callable[[], Mapping[str, Identity]],
        provider: TokenProvider,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.spec = spec
        self._clock: Clock = clock or SystemClock()
        self._identities = identities
        self._provider = provider
        self._metrics = metrics
        self._secret = spec.secret.encode()
        self._denied_log: dict[tuple[str, str], tuple[float, int]] = {}
        remember_secret(spec.secret)  # redacted by value from every log line
        self._log = get_logger()
        metrics.endpoint_configured([g.resource for g in spec.grants])

    def routes(self) -> dict[str, Handler]:
        """Path → handler, for ``httpserver.HttpServer``."""
        return {PATH: self.handle}

    async def handle(self, request: Request) -> Response:
        """One token request (see the module docstring for every decision)."""
        started = self._clock.monotonic()
        response, result, resource = await self._decide(request)
        self._metrics.endpoint_request(result, resource, self._clock.monotonic() - started)
        return response

    def _denied(
        self, request: Request, status: int, result: str, reason: str, resource: str = "other"
    ) -> tuple[Response, str, str]:
        # One line per (peer host, reason) per DENIED_LOG_INTERVAL: a flood of bad requests
        # must not flood the log (each is still counted in the requests metric).
        host = request.peer.rsplit(":", 1)[0]
        now = self._clock.monotonic()
        key = (host, reason)
        last, suppressed = self._denied_log.get(key, (-math.inf, 0))
        if now - last >= DENIED_LOG_INTERVAL:
            fields = {"suppressed": suppressed} if suppressed else {}
            self._log.warning(
                "endpoint request denied", peer=request.peer, status=status, reason=reason, **fields
            )
            if len(self._denied_log) >= 1024:  # bounded: many peers cost memory, not the log
                self._denied_log.clear()
            self._denied_log[key] = (now, 0)
        else:
            self._denied_log[key] = (last, suppressed + 1)
        return _error(status, reason), result, resource

    async def _decide(self, request: Request) -> tuple[Response, str, str]:
        sent = request.headers.get(HEADER)
        if sent is None:
            return self._denied(request, 401, "unauthorized", "X-IDENTITY-HEADER is missing")
        if not hmac.compare_digest(sent.encode("latin-1"), self._secret):
            return self._denied(request, 401, "unauthorized", "X-IDENTITY-HEADER is wrong")
        query = request.query
        if query.get("api-version") != API_VERSION:
            return self._denied(request, 400, "bad_request", f"api-version must be {API_VERSION}")
        if any(key in query for key in UNSUPPORTED_SELECTORS):
            return self._denied(request, 400, "bad_request", "select an identity by client_id only")
        raw_resource = query.get("resource", "").strip()
        if not raw_resource:
            return self._denied(request, 400, "bad_request", "resource is required")
        client_id = query.get("client_id")
        identities = self._identities()
        identity: Identity | None = None
        if client_id:
            identity = next(
                (i for i in identities.values() if i.client_id.lower() == client_id.lower()),
                None,
            )
            if identity is None:
                return self._denied(request, 400, "bad_request", "client_id is not configured")
        key = resource_key(raw_resource)
        grants = [g for g in self.spec.grants if g.resource == key]
        label = key if grants else "other"
        if identity is not None:
            grants = [g for g in grants if g.identity == identity.name]
        if not grants:
            return self._denied(request, 403, "forbidden", "resource is not allowed", label)
        identity = identities.get(grants[0].identity)
        if identity is None:  # config guarantees it; a reload race answers rather than crashes
            return _error(500, "identity unavailable"), "error", label
        try:
            token = await self._provider.get(identity.name, scope_of(key))
        except TokenUnavailable as exc:
            self._log.warning(
                "endpoint request failed", peer=request.peer, status=500, reason=str(exc)
            )
            return _error(500, str(exc)), "error", label
        body = {
            "access_token": token.token,
            "expires_on": str(int(token.expires_on)),
            "resource": raw_resource,
            "token_type": token.token_type or "Bearer",
            "client_id": identity.client_id,
        }
        return Response(200, json.dumps(body).encode(), "application/json"), "ok", label
