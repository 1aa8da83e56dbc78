"""The Entra v2 token endpoint: building the request, parsing the answer, classifying errors.

One request: ``POST {authority_host}/{tenant}/oauth2/v2.0/token`` with the client-credentials
grant and the projected token as a jwt-bearer client assertion (Microsoft identity platform,
"client credentials flow: second case, access token request with a certificate/federated
credential"). The answer is parsed into an ``AccessToken``; a failure becomes exactly one
``ExchangeError`` subclass (see ``errors``) carrying the AADSTS code, Entra's ids and a hint.
This module knows nothing of *when* requests happen or where tokens go.
"""

from __future__ import annotations

import json
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from entra_tokend.exchange.errors import (
    ClientError,
    ErrorDetails,
    ExchangeError,
    InvalidResponse,
    NetworkError,
    RequestTimeout,
    ServerError,
    Throttled,
)
from entra_tokend.exchange.transport import ClientPool
from entra_tokend.model import AccessToken, Clock, Identity, SystemClock

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_BODY_BYTES = 1024 * 1024

# AADSTS codes that mean the configuration is wrong: retrying soon cannot help, and
# `run --once` fails at once. 700024 (assertion expired) is not here: a rotation fixes it.
# Source: Microsoft Entra authentication and authorization error codes (learn.microsoft.com).
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
CONFIG_ERRORS = frozenset(
    {"invalid_client", "unauthorized_client", "invalid_scope", "invalid_resource"}
)
FEDERATION_CODES = frozenset({70021, 700211, 700212, 700213})
ASSERTION_EXPIRED_CODE = 700024

HINT_FEDERATION = (
    "compare the federated credential's issuer, subject and audience "
    "with the projected token's claims"
)
HINT_ASSERTION_EXPIRED = "the projected token expired; waiting for kubelet to rotate it"
HINT_CONFIGURATION = "check the client id, tenant id and scope in the configuration"


def token_endpoint(identity: Identity) -> str:
    """The Entra v2 token endpoint URL of ``identity``'s tenant."""
    return f"{identity.authority_host}/{identity.tenant_id}/oauth2/v2.0/token"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3: delta-seconds or an
    HTTP-date); None when absent or unparsable."""
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


def error_details(status: int, body: Any) -> ErrorDetails:
    """Extract Entra's error fields (``error``, ``error_codes``, ``error_description``,
    ``trace_id``, ``correlation_id``) from a parsed JSON body; any shape is tolerated."""
    if not isinstance(body, dict):
        return ErrorDetails(status=status)
    desc = _str_or_none(body.get("error_description"))
    return ErrorDetails(
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
    """Parse a 200 response body (``access_token``, ``expires_in`` seconds, optional
    ``refresh_in``, ``token_type``). Raises InvalidResponse naming what is wrong, never the
    token. ``expires_on`` is ``sent_at`` + ``expires_in``."""

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


def classify(
    status: int, body: bytes, retry_after_header: str | None, request_id: str, now: float
) -> ExchangeError:
    """The ``ExchangeError`` for a non-200 answer, with its hint and configuration flag."""
    retry_after = parse_retry_after(retry_after_header, now)
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
        return Throttled(summary, request_id=request_id, details=details, retry_after=retry_after)
    if status >= 500:
        return ServerError(summary, request_id=request_id, details=details, retry_after=retry_after)
    if 400 <= status < 500 and (details.error or details.aadsts):
        configuration = details.aadsts in CONFIG_ERROR_CODES or details.error in CONFIG_ERRORS
        federation = details.aadsts in FEDERATION_CODES
        hint = None
        if federation:
            hint = HINT_FEDERATION
        elif details.aadsts == ASSERTION_EXPIRED_CODE:
            hint = HINT_ASSERTION_EXPIRED
        elif configuration:
            hint = HINT_CONFIGURATION
        return ClientError(
            summary,
            request_id=request_id,
            details=details,
            hint=hint,
            configuration=configuration,
            needs_assertion_claims=federation,
        )
    return InvalidResponse(
        f"unexpected HTTP {status} without an Entra error body",
        request_id=request_id,
        details=details,
    )


class EntraExchange:
    """Exchanges a client assertion for an access token at an identity's Entra tenant."""

    def __init__(self, pool: ClientPool, clock: Clock | None = None) -> None:
        self._pool = pool
        self._clock: Clock = clock or SystemClock()

    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        """Request an access token for ``scope`` with ``assertion`` as the client assertion.

        Returns an ``AccessToken`` stamped with the identity's tenant and client ids.
        Raises an ``ExchangeError`` subclass; its text never holds the assertion or a token.
        """
        request_id = str(uuid.uuid4())
        form = {
            "client_id": identity.client_id,
            "scope": scope,
            "grant_type": GRANT_TYPE,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        headers = {"x-ms-client-request-id": request_id, "return-client-request-id": "true"}
        sent_at = self._clock.wall()
        client = self._pool.client(identity.ca_file)
        try:
            async with client.stream(
                "POST", token_endpoint(identity), data=form, headers=headers
            ) as response:
                body = await _read_capped(response, request_id)
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
        if status != 200:
            raise classify(status, body, retry_after_header, request_id, self._clock.wall())
        token = parse_token_response(body, scope, request_id, sent_at)
        return AccessToken(
            token=token.token,
            token_type=token.token_type,
            expires_in=token.expires_in,
            expires_on=token.expires_on,
            refresh_in=token.refresh_in,
            scope=scope,
            request_id=request_id,
            tenant_id=identity.tenant_id,
            client_id=identity.client_id,
        )


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
