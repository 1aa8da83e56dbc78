"""Azure Container Registry: an Entra access token exchanged for per-registry refresh tokens.

``AcrExchange`` wraps another exchange stage (``EntraExchange``): it obtains an Entra token
for the token's scope (by default ``https://containerregistry.azure.net/.default``), then, for
each configured registry, asks the registry's token service for an ACR refresh token.

Protocol (Azure Container Registry's public OAuth documentation, "Azure Container Registry
authentication - AAD-OAuth", docs/AAD-OAuth.md in Azure/acr, and the Azure SDK for Python's
``azure-containerregistry`` ``_exchange_client.py``, which performs the same request):

1. ``GET https://<registry>/v2/`` answers 401 with ``WWW-Authenticate: Bearer
   realm="https://<registry>/oauth2/token",service="<registry>"``. The exchange endpoint is
   ``/oauth2/exchange`` on the realm's host and ``service`` is the challenge's. Without such a
   challenge the registry itself and its name are used. (For ACR both are the registry; a
   registry whose token service lives elsewhere — the tests' real CNCF registry with the
   emulator as realm — works the same way.) The realm must be https, or http on loopback.
2. ``POST <exchange endpoint>`` form-encoded ``grant_type=access_token``, ``service``,
   ``tenant`` (the identity's tenant id), ``access_token`` (the Entra token). 200 answers
   ``{"refresh_token": "<JWT>"}``; its ``exp`` claim is when it ends (about 3 h).

The Entra token is only a means to the exchange: it is reused for the next exchange while it
has at least half its life left (``REUSE_FRACTION``), so a refresh planned at half of the Entra
token's hour, a retry after a registry's failure or a rotation costs no Entra request.

Every registry must succeed for the exchange to succeed: see ``AcrExchange.exchange`` for why.
Failures: 401/403 are configuration errors (``ClientError``, hint: role assignment, registry
name); 429 ``Throttled`` and 5xx ``ServerError`` honour Retry-After; other answers
``InvalidResponse`` — among them a refresh token whose ``exp`` is not a finite time between
``MIN_REFRESH_LIFETIME`` and ``MAX_LIFETIME`` seconds ahead, and one that is the Entra token
sent (an echoed credential is not a registry's). Messages name the registry and ACR's
correlation id header (redacted before it is cut), never a token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from entra_tokend.exchange.answers import B64TOKEN_RE, MAX_LIFETIME, parse_retry_after
from entra_tokend.exchange.entra import read_capped
from entra_tokend.exchange.errors import (
    ClientError,
    ErrorDetails,
    InvalidResponse,
    NetworkError,
    RequestTimeout,
    ServerError,
    Throttled,
)
from entra_tokend.exchange.transport import ClientPool
from entra_tokend.logging import redact_cut, remember_secret
from entra_tokend.model import (
    ACR_NULL_USER,
    AccessToken,
    Clock,
    Identity,
    SystemClock,
    registry_key,
)
from entra_tokend.ports import Exchange

CORRELATION_HEADERS = ("x-ms-correlation-request-id", "x-ms-request-id")
"""Response headers in which ACR names the request for support cases (first found wins)."""
HINT_ROLE = (
    "grant the identity AcrPull (or AcrPush) on registry {registry}, and check the registry "
    "name and the scope (https://containerregistry.azure.net/.default)"
)
REUSE_FRACTION = 0.5
"""The held Entra token is used for another exchange while at least this fraction of its
lifetime is left (so a registry always receives a token with a comfortable margin)."""
MIN_REFRESH_LIFETIME = 300
"""The shortest refresh-token lifetime accepted (seconds). ACR issues about 3 h; one that ends
within minutes would have the daemon exchange again every few seconds."""
_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def parse_challenge(header: str | None) -> dict[str, str]:
    """The auth-params of a ``Bearer`` ``WWW-Authenticate`` challenge (RFC 6750 §3), lower-
    cased names; empty for another scheme or no header."""
    if not header or not header.strip().lower().startswith("bearer "):
        return {}
    params = header.strip()[len("bearer ") :]
    return {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM_RE.finditer(params)}


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a JWT, unverified: None when the token is not a
    readable JWT or has no ``exp``; NaN when ``exp`` is there but not a number; ``inf`` for a
    number too large for a float."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    if not isinstance(claims, dict) or "exp" not in claims:
        return None
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return math.nan
    try:
        return float(exp)
    except OverflowError:
        return math.inf


def _base_url(registry: str) -> str:
    return registry if registry.startswith("http://") else f"https://{registry}"


def _safe_realm(realm: str) -> str | None:
    """``scheme://host[:port]`` of a challenge realm that may receive an Entra token: https,
    or http only on loopback (the rule of ``authority_host``)."""
    try:
        parts = urlsplit(realm)
        host = parts.hostname
    except ValueError:
        return None
    if not host or parts.scheme not in ("https", "http"):
        return None
    if parts.scheme == "http" and host not in _LOOPBACK:
        return None
    return f"{parts.scheme}://{parts.netloc}"


class AcrExchange:
    """An exchange stage for ``format = "docker-config"``: Entra token → ACR refresh tokens.

    ``registries`` are ``host[:port]`` (https) or ``http://host[:port]`` (loopback only, checked
    by the configuration). TLS trust is the identity's (``ca_file``, else ``SSL_CERT_FILE``).
    """

    def __init__(
        self,
        inner: Exchange,
        registries: Sequence[str],
        pool: ClientPool,
        clock: Clock | None = None,
    ) -> None:
        self._inner = inner
        self.registries = tuple(registries)
        self._pool = pool
        self._clock: Clock = clock or SystemClock()
        self._endpoints: dict[str, tuple[str, str]] = {}  # registry -> (exchange URL, service)
        # The last Entra token and what it was for: reused while young (see _entra).
        self._held: tuple[tuple[Identity, str], AccessToken] | None = None

    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        """The Entra token for ``scope`` plus one ACR refresh token per registry.

        Returns an ``AccessToken`` whose ``extra`` maps ``host[:port]`` → refresh token, whose
        ``expires_on`` is the earliest refresh token ``exp`` (when the file on disk stops
        working: the expiry gauge) and whose ``expires_in`` is the shortest lifetime of every
        credential involved, the Entra token's whole lifetime included (seconds; the scheduler
        refreshes at ``refresh_at`` of it). ``refresh_in`` is Entra's hint only when the Entra
        token is the shortest-lived. ``token`` is the Entra token used, perhaps one held from an
        earlier exchange (see ``_entra``), and ``entra`` that token with its own expiry. Raises
        ``ExchangeError`` when the Entra request or any registry fails.

        All or nothing, on purpose: a failed registry fails the whole refresh and the file on
        disk stays as it was, so no registry's still-valid entry is ever removed or replaced
        by a partial file, the failure shows in the ``reason`` label and the runner's backoff
        and Retry-After rules apply unchanged. The cost: while one registry keeps failing,
        the others' entries are not renewed either and end at their own ``exp`` (about 3 h);
        a token per registry keeps registries independent.
        """
        entra = await self._entra(identity, scope, assertion)
        sent_at = self._clock.wall()
        results = await asyncio.gather(
            *(self._one(identity, r, entra, sent_at) for r in self.registries),
            return_exceptions=True,
        )
        refresh: dict[str, str] = {}
        # The refresh is planned on the shortest lifetime of every credential involved, the
        # Entra token included: the scheduler plans on min(expires_in, time left). For a held
        # Entra token that is its whole lifetime, as when it was fresh: it was reused with at
        # least half of it left, so the next refresh is due about when it ends, and that
        # refresh gets a new one.
        lifetimes = {"entra": entra.expires_in}
        file_expires = math.inf
        for registry, result in zip(self.registries, results, strict=True):
            if isinstance(result, BaseException):
                # A registry may have refused this Entra token: the next attempt gets a new one.
                self._held = None
                raise result  # an ExchangeError naming the registry (or a bug: the runner's)
            token, exp = result
            refresh[registry_key(registry)] = token
            # On disk are only the refresh tokens: the file ends when the first of them does
            # (the expiry gauge and EXPIRED state).
            file_expires = min(file_expires, exp)
            lifetimes[registry] = exp - sent_at
        shortest = min(lifetimes, key=lambda k: lifetimes[k])
        return AccessToken(
            token=entra.token,
            token_type=entra.token_type,
            expires_in=lifetimes[shortest],
            expires_on=file_expires if refresh else entra.expires_on,
            refresh_in=entra.refresh_in if shortest == "entra" else None,
            scope=entra.scope,
            request_id=entra.request_id,
            tenant_id=entra.tenant_id,
            client_id=entra.client_id,
            extra=refresh,
            entra=entra,  # its own expiry travels with it (the endpoint serves it)
        )

    async def _entra(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        """The held Entra token for (identity, scope) while at least ``REUSE_FRACTION`` of its
        lifetime is left, else a new one from the inner stage (then held)."""
        held = self._held
        if held is not None and held[0] == (identity, scope):
            token = held[1]
            if token.expires_on - self._clock.wall() >= token.expires_in * REUSE_FRACTION:
                remember_secret(token.token)  # kept among the remembered while in use
                return token
        token = await self._inner.exchange(identity, scope, assertion)
        remember_secret(token.token)  # it never reaches a file, but may reach a log
        self._held = ((identity, scope), token)
        return token

    async def _endpoint(self, identity: Identity, registry: str) -> tuple[str, str]:
        """(exchange URL, service) of ``registry``, from its ``/v2/`` challenge (cached)."""
        cached = self._endpoints.get(registry)
        if cached is not None:
            return cached
        base = _base_url(registry)
        url, service = f"{base}/oauth2/exchange", registry_key(registry)
        request_id = str(uuid.uuid4())
        try:
            # Only the challenge header matters: the body is never read (no size to bound).
            async with (
                asyncio.timeout(self._pool.timeout),
                self._pool.hold(identity.ca_file, f"{base}/v2/") as channel,
                channel.stream("GET", f"{base}/v2/") as response,
            ):
                header = response.headers.get("www-authenticate")
        except (TimeoutError, httpx.TimeoutException):
            raise RequestTimeout(
                f"registry {registry_key(registry)}: no answer to /v2/ within the timeout",
                request_id=request_id,
            ) from None
        except httpx.HTTPError as exc:
            raise NetworkError(
                f"registry {registry_key(registry)}: cannot reach /v2/: {type(exc).__name__}",
                request_id=request_id,
            ) from None
        challenge = parse_challenge(header)
        realm = _safe_realm(challenge.get("realm", ""))
        if challenge.get("realm") and realm is None:
            raise ClientError(
                f"registry {registry_key(registry)}: its token realm is not https "
                "(or http on loopback); refusing to send it a token",
                request_id=request_id,
                configuration=True,
                hint="check the registry name",
            )
        if realm is not None:
            url = f"{realm}/oauth2/exchange"
        service = challenge.get("service") or service
        self._endpoints[registry] = (url, service)
        return url, service

    async def _one(
        self, identity: Identity, registry: str, entra: AccessToken, sent_at: float
    ) -> tuple[str, float]:
        """One registry's refresh token and its expiry (unix seconds). Raises
        ``ExchangeError`` naming the registry."""
        name = registry_key(registry)
        url, service = await self._endpoint(identity, registry)
        request_id = str(uuid.uuid4())
        form = {
            "grant_type": "access_token",
            "service": service,
            "tenant": identity.tenant_id,
            "access_token": entra.token,
        }
        try:
            # The whole exchange within request_timeout, as for Entra: httpx's timeouts are per
            # phase, and a body trickling in a byte at a time never ends one.
            async with (
                asyncio.timeout(self._pool.timeout),
                self._pool.hold(identity.ca_file, url) as channel,
                channel.stream(
                    "POST", url, data=form, headers={"x-ms-client-request-id": request_id}
                ) as response,
            ):
                body = await read_capped(response, request_id)
                status = response.status_code
                headers = response.headers
        except (TimeoutError, httpx.TimeoutException):
            self._endpoints.pop(registry, None)
            raise RequestTimeout(
                f"registry {name}: no answer from the token exchange within the timeout",
                request_id=request_id,
            ) from None
        except httpx.HTTPError as exc:
            self._endpoints.pop(registry, None)
            raise NetworkError(
                f"registry {name}: cannot reach the token exchange: {type(exc).__name__}",
                request_id=request_id,
            ) from None
        correlation = next((headers[h] for h in CORRELATION_HEADERS if h in headers), None)
        # Redacted before it is cut: a registry may echo a secret there, and a cut secret
        # matches no redaction rule any more.
        details = ErrorDetails(
            status=status, correlation_id=redact_cut(correlation, 100) if correlation else None
        )
        if status == 200:
            token = _refresh_token(body, name, request_id, details, entra.token)
            exp = jwt_exp(token)
            # A refresh token without exp is assumed to last as long as the Entra token.
            return token, _checked_exp(
                entra.expires_on if exp is None else exp, sent_at, name, request_id, details
            )
        self._endpoints.pop(registry, None)  # re-read the challenge next time
        retry_after = parse_retry_after(headers.get("retry-after"), self._clock.wall())
        summary = f"registry {name}: token exchange answered HTTP {status}"
        if status in (401, 403):
            raise ClientError(
                summary,
                request_id=request_id,
                details=details,
                hint=HINT_ROLE.format(registry=name),
                configuration=True,
            )
        if status == 429:
            raise Throttled(
                summary, request_id=request_id, details=details, retry_after=retry_after
            )
        if status >= 500:
            raise ServerError(
                summary, request_id=request_id, details=details, retry_after=retry_after
            )
        if status == 404:
            raise ClientError(
                summary,
                request_id=request_id,
                details=details,
                hint=f"is {name} an Azure Container Registry? check the registry name",
                configuration=True,
            )
        raise InvalidResponse(summary, request_id=request_id, details=details)


def _checked_exp(
    exp: float, sent_at: float, name: str, request_id: str, details: ErrorDetails
) -> float:
    """``exp`` when it is finite and ``MIN_REFRESH_LIFETIME``..``MAX_LIFETIME`` seconds after
    ``sent_at``; else InvalidResponse (the file on disk stays as it is)."""
    if math.isfinite(exp) and MIN_REFRESH_LIFETIME <= exp - sent_at <= MAX_LIFETIME:
        return exp
    raise InvalidResponse(
        f"registry {name}: the refresh token's exp is not a time {MIN_REFRESH_LIFETIME} s to "
        f"{MAX_LIFETIME} s ahead",
        request_id=request_id,
        details=details,
    )


def _refresh_token(
    body: bytes, name: str, request_id: str, details: ErrorDetails, sent: str
) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    token = data.get("refresh_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not B64TOKEN_RE.match(token):
        raise InvalidResponse(
            f"registry {name}: token exchange answer has no usable refresh_token",
            request_id=request_id,
            details=details,
        )
    if token == sent:
        raise InvalidResponse(
            f"registry {name}: answered with the Entra token it was sent (an echoed "
            "credential); refusing to write it",
            request_id=request_id,
            details=details,
        )
    # The log's redaction by value covers it from now on — also as the docker config's
    # base64 `auth` value, which a hook printing the file would show.
    remember_secret(token, base64.b64encode(f"{ACR_NULL_USER}:{token}".encode()).decode())
    return token
