"""Entra's token-endpoint error responses: codes, OAuth ``error`` values, statuses, texts.

The wording follows what Entra returns in the field (as quoted in public issue threads);
the trailer with trace id, correlation id and timestamp is appended the way Entra does.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class EntraError(Exception):
    """One error answer: HTTP status, OAuth ``error``, AADSTS code and its text."""

    status: int
    error: str
    code: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body Entra would send, with fresh trace and correlation ids."""
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        trace_id = str(uuid.uuid4())
        correlation_id = str(uuid.uuid4())
        return {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.text}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        }

    def encode(self) -> bytes:
        """The body as UTF-8 JSON."""
        return json.dumps(self.body()).encode()


WIF_DOC = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def missing_parameter(name: str) -> EntraError:
    """AADSTS900144: a required form parameter is absent."""
    return EntraError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )


def unsupported_grant_type(value: str) -> EntraError:
    """AADSTS70003: grant_type is not one Entra knows for this endpoint."""
    return EntraError(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{value}'.",
    )


def invalid_assertion_type() -> EntraError:
    """AADSTS90011: client_assertion_type is not jwt-bearer."""
    return EntraError(400, "invalid_request", 90011, "Unexpected client assertion type.")


def missing_credential() -> EntraError:
    """AADSTS7000218: neither client_assertion nor client_secret was sent."""
    return EntraError(
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    )


def tenant_not_found(tenant: str) -> EntraError:
    """AADSTS90002: the tenant in the path does not exist."""
    return EntraError(
        400,
        "invalid_request",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
        "are signing into the correct cloud. Check with your subscription administrator, this "
        "may happen if there are no active subscriptions for the tenant.",
    )


def app_not_found(client_id: str, tenant: str) -> EntraError:
    """AADSTS700016: no application with this client id in the tenant."""
    return EntraError(
        400,
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory "
        f"'{tenant}'. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You may have "
        "sent your authentication request to the wrong tenant.",
    )


def scope_not_default(scope: str) -> EntraError:
    """AADSTS1002012: client credentials need ``<resource>/.default``."""
    return EntraError(
        400,
        "invalid_scope",
        1002012,
        f"The provided value for scope {scope} is not valid. Client credential flows must "
        "have a scope value with /.default suffixed to the resource identifier (application "
        "ID URI).",
    )


def scope_invalid(scope: str) -> EntraError:
    """AADSTS70011: the scope names more than one resource (or is otherwise unusable)."""
    return EntraError(
        400,
        "invalid_scope",
        70011,
        "The provided request must include a 'scope' input parameter. The provided value for "
        f"the input parameter 'scope' is not valid. The scope {scope} is not valid.",
    )


def assertion_malformed() -> EntraError:
    """AADSTS50027: the assertion is not a well-formed JWT."""
    return EntraError(
        400,
        "invalid_request",
        50027,
        "JWT token is invalid or malformed.",
    )


def signing_key_unknown(kid: str, issuer: str) -> EntraError:
    """AADSTS7000272: the assertion's ``kid`` is not in the issuer's published JWKS."""
    return EntraError(
        401,
        "invalid_client",
        7000272,
        f"The certificate with identifier {kid} used to sign the federated credential could "
        f"not be found in the metadata of identity provider {issuer}. Please validate that "
        "your Identity Provider's metadata exposes the key used to sign the incoming token.",
    )


def assertion_bad_signature() -> EntraError:
    """AADSTS700027: the assertion's signature does not verify with the named key."""
    return EntraError(
        401,
        "invalid_client",
        700027,
        "Client assertion failed signature validation.",
    )


def assertion_expired(now: float, nbf: float | None, exp: float | None) -> EntraError:
    """AADSTS700024: the assertion is outside its validity window."""
    return EntraError(
        401,
        "invalid_client",
        700024,
        f"Client assertion is not within its valid time range. Current time: {_iso(now)}, "
        f"assertion valid from {_iso(nbf or 0)}, expiry time of assertion {_iso(exp or 0)}. "
        "Review the documentation at "
        "https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
    )


def no_federated_credential(iss: str, sub: str, aud: str) -> EntraError:
    """AADSTS70021: the application has no federated credential that matches at all."""
    return EntraError(
        400,
        "invalid_request",
        70021,
        "No matching federated identity record found for presented assertion. "
        f"Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud}'. "
        + WIF_DOC,
    )


def issuer_mismatch(iss: str) -> EntraError:
    """AADSTS700211: no federated credential has the assertion's issuer."""
    return EntraError(
        401,
        "invalid_client",
        700211,
        f"No matching federated identity record found for presented assertion issuer '{iss}'. "
        "Please check your federated identity credential Subject, Audience and Issuer against "
        f"the presented assertion. {WIF_DOC}",
    )


def audience_mismatch(aud: str) -> EntraError:
    """AADSTS700212: issuer and subject match a credential but its audience does not."""
    return EntraError(
        401,
        "invalid_client",
        700212,
        f"No matching federated identity record found for presented assertion audience '{aud}'. "
        "Please check your federated identity credential Subject, Audience and Issuer against "
        f"the presented assertion. {WIF_DOC}",
    )


def subject_mismatch(sub: str) -> EntraError:
    """AADSTS700213: a credential has the issuer but none has the assertion's subject."""
    return EntraError(
        401,
        "invalid_client",
        700213,
        f"No matching federated identity record found for presented assertion subject '{sub}'. "
        "Please check your federated identity credential Subject, Audience and Issuer against "
        f"the presented assertion. {WIF_DOC}",
    )


# Defaults for injected "status" faults: what Entra (or its front door) says for each status.
_STATUS_DEFAULTS: dict[int, tuple[str, int, str]] = {
    400: (
        "invalid_request",
        900144,
        "The request body must contain the following parameter: 'grant_type'.",
    ),
    401: ("invalid_client", 7000215, "Invalid client secret provided."),
    403: ("unauthorized_client", 700016, "Application is not authorized in this tenant."),
    429: ("temporarily_unavailable", 90055, "Too many requests. Please try again later."),
    500: (
        "server_error",
        50000,
        "There was an error issuing a token or an issue with our sign-in service.",
    ),
    502: ("server_error", 50000, "Bad gateway."),
    503: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
    504: ("server_error", 50000, "Gateway timeout."),
}


def for_status(
    status: int,
    *,
    error: str | None = None,
    aadsts: int | None = None,
    retry_after: str | None = None,
) -> EntraError:
    """An error body for an injected status fault, with Entra-like defaults per status."""
    default_error, default_code, text = _STATUS_DEFAULTS.get(
        status,
        (
            "temporarily_unavailable" if status >= 500 else "invalid_request",
            50000,
            f"Injected HTTP {status} from the emulator.",
        ),
    )
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return EntraError(status, error or default_error, aadsts or default_code, text, headers)
