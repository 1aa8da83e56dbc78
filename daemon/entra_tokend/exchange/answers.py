"""What Entra's token endpoint answers, and what it means: the token response parsed into an
``AccessToken`` with every number bounded, an error answer classified into exactly one
``ExchangeError`` subclass (see ``errors``) with the AADSTS code, Entra's ids and a hint, and
an identity-binding proxy's own failures told apart from Entra's. Pure functions of the answer's
status, headers and body: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from email.utils import parsedate_to_datetime
from typing import Any

from entra_tokend.exchange.errors import (
    ClientError,
    ErrorDetails,
    ExchangeError,
    InvalidResponse,
    ServerError,
    Throttled,
)
from entra_tokend.logging import redact_cut
from entra_tokend.model import AccessToken

# Bounds on numbers from the network: every number a server sends is checked against a range
# before anything is scheduled on it. Entra issues tokens of 60-90 minutes (up to 24 h with
# configurable lifetimes); anything outside [1 s, 7 days] is not a token lifetime we can
# schedule sanely, so it is an invalid response rather than a hot loop or a refresh planned
# years ahead.
MIN_LIFETIME = 1
MAX_LIFETIME = 7 * 86400
# Retry-After beyond an hour is capped: a throttled token still retries within the hour.
MAX_RETRY_AFTER = 3600.0

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
# Failures a new assertion can fix: expired, not yet valid or unverifiable assertions, and a
# federation mismatch (a re-issued projected token may carry the corrected claims).
ROTATION_FIXABLE_CODES = FEDERATION_CODES | {ASSERTION_EXPIRED_CODE, 700025, 700027, 7000215}

HINT_FEDERATION = (
    "compare the federated credential's issuer, subject and audience "
    "with the projected token's claims"
)
HINT_ASSERTION_EXPIRED = "the projected token expired; waiting for kubelet to rotate it"
HINT_CONFIGURATION = "check the client id, tenant id and scope in the configuration"
HINT_PROXY_FORBIDDEN = (
    "the identity-binding token proxy refused the request: check that the pod is annotated "
    'azure.workload.identity/use-identity-binding: "true", that an identity binding exists '
    "for this managed identity and cluster, and that the service account is bound to a "
    "ClusterRole granting use-managed-identity on this client id"
)
HINT_PROXY_UNAUTHORIZED = (
    "the identity-binding token proxy rejected the service-account token; waiting for kubelet "
    "to rotate it"
)
HINT_PROXY_TLS = (
    "check token_proxy_sni_name (AZURE_KUBERNETES_SNI_NAME) and the token proxy CA "
    "(AZURE_KUBERNETES_CA_FILE / AZURE_KUBERNETES_CA_DATA)"
)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3: delta-seconds or an
    HTTP-date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Bounded before conversion: "9" * 5000 is digits too.
        return MAX_RETRY_AFTER if len(value) > 6 else min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    if when.tzinfo is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


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
    # Redacted *before* it is cut: a cut can split a secret the service echoed (an assertion
    # in error_description) so that neither its shape nor its value matches any more.
    return redact_cut(value, limit) if isinstance(value, str) and value else None


B64TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
"""RFC 6750 §2.1 b64token: the characters a bearer token may contain."""
TOKEN_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_ID_RE = re.compile(r"^[0-9A-Za-z-]{1,64}$")


def _id_or_none(value: Any) -> str | None:
    """A trace or correlation id: Entra sends GUIDs; anything else is not an id to log."""
    return value if isinstance(value, str) and _ID_RE.match(value) else None


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
        trace_id=_id_or_none(body.get("trace_id")),
        correlation_id=_id_or_none(body.get("correlation_id")),
    )


def _seconds(value: Any) -> int | None:
    """A whole number of seconds within [MIN_LIFETIME, MAX_LIFETIME], or None.

    Entra's v2 endpoint sends JSON integers; older endpoints and the App Service protocol send
    strings of ASCII digits. Floats, signs, exponents, Unicode digits, bools are not seconds.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        value = int(value)
    if isinstance(value, int) and MIN_LIFETIME <= value <= MAX_LIFETIME:
        return value
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
    if not B64TOKEN_RE.match(token):
        # Anything else (quotes, ';', '$', backticks) could break out of a template, a header
        # line or a JAAS file; no bearer token contains it.
        raise invalid("has an access_token with characters no bearer token contains")
    expires_in = _seconds(data.get("expires_in"))
    if expires_in is None:
        raise invalid(
            f"has no usable expires_in (whole seconds from {MIN_LIFETIME} to {MAX_LIFETIME})"
        )
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not TOKEN_TYPE_RE.match(token_type):
        raise invalid("has a token_type that is not a short ASCII word such as Bearer")
    refresh_in = None
    if "refresh_in" in data:
        refresh_in = _seconds(data["refresh_in"])
        if refresh_in is None or refresh_in >= expires_in:
            raise invalid("has a refresh_in that is not whole seconds below expires_in")
    return AccessToken(
        token=token,
        token_type=token_type,
        expires_in=float(expires_in),
        # Measured from when the request was sent: the token cannot outlive that estimate.
        expires_on=sent_at + expires_in,
        refresh_in=None if refresh_in is None else float(refresh_in),
        scope=scope,
        request_id=request_id,
    )


def classify(
    status: int,
    body: bytes,
    retry_after_header: str | None,
    request_id: str,
    now: float,
    *,
    proxy: str | None = None,
) -> ExchangeError:
    """The ``ExchangeError`` for a non-200 answer, with its hint and configuration flag.

    ``proxy`` is the identity-binding token proxy the request went through, if any: it passes
    Entra's answers through unchanged (classified as Entra's), and an answer without Entra's
    error fields is the proxy's own failure (``proxy_failure``).
    """
    retry_after = parse_retry_after(retry_after_header, now)
    try:
        parsed: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    details = error_details(status, parsed)
    if proxy is not None and status >= 400 and not (details.error or details.aadsts):
        return proxy_failure(proxy, details, request_id, retry_after)
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
            rotation_may_fix=details.aadsts in ROTATION_FIXABLE_CODES,
        )
    return InvalidResponse(
        f"unexpected HTTP {status} without an Entra error body",
        request_id=request_id,
        details=details,
    )


def proxy_failure(
    proxy: str, details: ErrorDetails, request_id: str, retry_after: float | None
) -> ExchangeError:
    """The identity-binding token proxy failed on its own (an answer without Entra's error
    fields): ``server_error`` naming the proxy — with the RBAC hint on 403 (not retried soon:
    a configuration error), the rotation hint on 401 — or ``throttled`` on 429. The body is
    never quoted."""
    summary = f"token proxy {proxy} answered HTTP {details.status} itself (not an Entra error)"
    if details.status == 429:
        return Throttled(summary, request_id=request_id, details=details, retry_after=retry_after)
    if details.status == 403:
        return ServerError(
            summary,
            request_id=request_id,
            details=details,
            hint=HINT_PROXY_FORBIDDEN,
            configuration=True,
        )
    if details.status == 401:
        return ServerError(
            summary,
            request_id=request_id,
            details=details,
            hint=HINT_PROXY_UNAUTHORIZED,
            rotation_may_fix=True,
        )
    return ServerError(summary, request_id=request_id, details=details, retry_after=retry_after)
