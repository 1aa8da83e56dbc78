"""The token request: how to talk to Entra, and nothing about when.

``Exchanger.exchange`` performs one client-credentials request with a jwt-bearer client
assertion and returns an ``AccessToken`` or raises one ``ExchangeError`` subclass. Each subclass
carries a fixed ``reason`` (the metric label) so the scheduler branches on types, not strings.
No exception text ever holds the assertion or the access token.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import uuid
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx

from entra_tokend import __version__
from entra_tokend.config import Identity

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_BODY_BYTES = 1024 * 1024
USER_AGENT = f"entra-tokend/{__version__}"

# AADSTS codes that mean the configuration is wrong: retrying soon cannot help, and
# `run --once` fails at once. 700024 (assertion expired) is not here: a rotation fixes it.
CONFIG_ERROR_CODES = frozenset(
    {
        700016,  # application not found in the tenant
        90002,  # tenant not found
        900023,  # tenant identifier is not valid
        70021,  # no matching federated identity record
        700211,  # no matching federated identity record for the issuer
        700212,  # no matching federated identity record for the audience
        700213,  # no matching federated identity record for the subject
        1002012,  # scope is not <resource>/.default
        70011,  # invalid scope
        500011,  # resource principal not found in the tenant
        500014,  # resource disabled
        7000112,  # application disabled
        700027,  # client assertion signature check failed
    }
)
FEDERATION_CODES = frozenset({70021, 700211, 700212, 700213})
ASSERTION_EXPIRED_CODE = 700024


@dataclass(frozen=True)
class AccessToken:
    """An access token from Entra. ``repr`` never shows the token."""

    token: str = field(repr=False)
    token_type: str
    expires_in: float
    expires_on: float
    refresh_in: float | None
    scope: str
    request_id: str


@dataclass(frozen=True)
class EntraErrorDetails:
    """What Entra said about a failed request: the facts a support case needs."""

    status: int | None = None
    error: str | None = None
    aadsts: int | None = None
    description: str | None = None
    trace_id: str | None = None
    correlation_id: str | None = None

    def fields(self) -> dict[str, Any]:
        """Non-empty fields for a log line."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


class ExchangeError(Exception):
    """A failed token request. ``reason`` is one of the fixed failure reasons."""

    reason: ClassVar[str] = "network"
    transient: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        request_id: str,
        details: EntraErrorDetails | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.details = details or EntraErrorDetails()
        self.retry_after = retry_after


class NetworkError(ExchangeError):
    """Connection refused, reset, TLS failure, DNS: the request never got an answer."""

    reason = "network"


class RequestTimeout(ExchangeError):
    """No answer within the request timeout."""

    reason = "timeout"


class Throttled(ExchangeError):
    """HTTP 429: Entra asks us to slow down (honour ``retry_after``)."""

    reason = "throttled"


class ServerError(ExchangeError):
    """HTTP 5xx."""

    reason = "server_error"


class InvalidResponse(ExchangeError):
    """An answer that is not a usable token response (HTML, non-JSON, missing fields)."""

    reason = "invalid_response"


class ClientError(ExchangeError):
    """HTTP 4xx with an Entra error: the request itself was refused."""

    reason = "client_error"

    @property
    def is_configuration(self) -> bool:
        """True when only a configuration change (not time, not a rotation) can fix it."""
        return self.details.aadsts in CONFIG_ERROR_CODES or self.details.error in (
            "invalid_client",
            "unauthorized_client",
            "invalid_scope",
            "invalid_resource",
        )

    @property
    def assertion_expired(self) -> bool:
        """AADSTS700024: the assertion was outside its validity; a rotation fixes it."""
        return self.details.aadsts == ASSERTION_EXPIRED_CODE


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _aadsts(body: dict[str, Any]) -> int | None:
    codes = body.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return codes[0]
    desc = body.get("error_description")
    if isinstance(desc, str) and desc.startswith("AADSTS"):
        digits = desc[6:].split(":", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


def _str_or_none(value: Any, limit: int = 500) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def error_details(status: int, body: Any) -> EntraErrorDetails:
    """Extract Entra's error fields from a parsed JSON body (any shape tolerated)."""
    if not isinstance(body, dict):
        return EntraErrorDetails(status=status)
    desc = _str_or_none(body.get("error_description"))
    return EntraErrorDetails(
        status=status,
        error=_str_or_none(body.get("error"), 100),
        aadsts=_aadsts(body),
        # The first line is the message; the rest repeats trace/correlation ids and a timestamp.
        description=desc.splitlines()[0] if desc else None,
        trace_id=_str_or_none(body.get("trace_id"), 100),
        correlation_id=_str_or_none(body.get("correlation_id"), 100),
    )


def _number(value: Any) -> float | None:
    # Entra's v2 endpoint sends integers; older endpoints sent numeric strings.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.isdigit():
        return float(value)
    return None


def parse_token_response(body: bytes, scope: str, request_id: str, sent_at: float) -> AccessToken:
    """Parse a 200 response body. Raises InvalidResponse naming what is wrong, never the token."""

    def invalid(why: str) -> InvalidResponse:
        return InvalidResponse(f"token response {why}", request_id=request_id)

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid("is not JSON") from None
    if not isinstance(data, dict):
        raise invalid("is not a JSON object")
    token = data.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise invalid("has no access_token")
    # ' ' is the only character that is both printable and whitespace.
    if not token.isprintable() or " " in token:
        raise invalid("has an access_token with whitespace or control characters")
    expires_in = _number(data.get("expires_in"))
    if expires_in is None or expires_in <= 0:
        raise invalid("has no usable expires_in")
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str):
        raise invalid("has a token_type that is not a string")
    refresh_in = _number(data.get("refresh_in"))
    return AccessToken(
        token=token,
        token_type=token_type,
        expires_in=expires_in,
        # Measured from when the request was sent: the token cannot outlive that estimate.
        expires_on=sent_at + expires_in,
        refresh_in=refresh_in if refresh_in and 0 < refresh_in < expires_in else None,
        scope=scope,
        request_id=request_id,
    )


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    cafile = ca_file or os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        import certifi  # noqa: PLC0415 - httpx's own dependency; only needed for the default

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


class Exchanger:
    """One shared HTTP client (per CA bundle) for every token request of the process."""

    def __init__(self, timeout: float = 10.0, max_connections: int = 16) -> None:
        self._timeout = httpx.Timeout(timeout)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def _client(self, identity: Identity) -> httpx.AsyncClient:
        key = str(identity.ca_file) if identity.ca_file else None
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                verify=_ssl_context(key),
                timeout=self._timeout,
                limits=self._limits,
                trust_env=True,  # HTTPS_PROXY / NO_PROXY
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
            self._clients[key] = client
        return client

    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        """Request an access token for ``scope``. Raises an ExchangeError subclass."""
        request_id = str(uuid.uuid4())
        form = {
            "client_id": identity.client_id,
            "scope": scope,
            "grant_type": GRANT_TYPE,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        headers = {"x-ms-client-request-id": request_id, "return-client-request-id": "true"}
        sent_at = time.time()
        try:
            async with self._client(identity).stream(
                "POST", identity.token_endpoint, data=form, headers=headers
            ) as response:
                body = await self._read_capped(response, request_id)
                status = response.status_code
                retry_after_header = response.headers.get("retry-after")
        except httpx.TimeoutException as exc:
            raise RequestTimeout(
                f"no answer from {identity.authority_host} within the timeout "
                f"({type(exc).__name__})",
                request_id=request_id,
            ) from None
        except httpx.HTTPError as exc:
            # httpx's transport messages name the error, never the request body.
            raise NetworkError(
                f"cannot reach {identity.authority_host}: {type(exc).__name__}: {exc}",
                request_id=request_id,
            ) from None
        if status == 200:
            return parse_token_response(body, scope, request_id, sent_at)
        retry_after = parse_retry_after(retry_after_header, time.time())
        try:
            parsed: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        details = error_details(status, parsed)
        summary = f"HTTP {status}"
        if details.error:
            summary += f" {details.error}"
        if details.description:
            summary += f": {details.description}"
        if status == 429:
            raise Throttled(
                summary, request_id=request_id, details=details, retry_after=retry_after
            )
        if status >= 500:
            raise ServerError(
                summary, request_id=request_id, details=details, retry_after=retry_after
            )
        if 400 <= status < 500 and (details.error or details.aadsts):
            raise ClientError(summary, request_id=request_id, details=details)
        raise InvalidResponse(
            f"unexpected HTTP {status} without an Entra error body",
            request_id=request_id,
            details=details,
        )

    @staticmethod
    async def _read_capped(response: httpx.Response, request_id: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise InvalidResponse(
                    f"response body larger than {MAX_BODY_BYTES} bytes", request_id=request_id
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Close every client (idle connections included)."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
