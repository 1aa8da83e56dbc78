"""The Azure Instance Metadata Service (IMDS) token protocol, opt-in (``[endpoint] imds``)::

    GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R
        [&client_id=|object_id=|msi_res_id=]
    Metadata: true
    → {"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in",
       "not_before", "resource", "token_type"}   (numbers as strings, as IMDS sends them)

Clients: librdkafka ≥ 2.12 (``sasl.oauthbearer.metadata.authentication.type=azure_imds``,
the URL from ``sasl.oauthbearer.token.endpoint.url``), azure-identity and MSAL Python with
``AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:PORT`` (both read ``access_token`` and
``expires_in``; MSAL requires ``expires_in``).

The protocol has no secret. The real IMDS relies on guards this adapter keeps: ``Metadata:
true`` is required (a plain link or redirect cannot add it), and a request that came through a
proxy (SSRF: ``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``, ``Via``) or from a browser
(``Origin``, ``Sec-Fetch-Site``/``-Dest``/``-User``) is refused; so is one whose ``Host`` is
not the loopback listener (a DNS-rebound page is same-origin and sends no ``Origin``; see
``guards``).
Errors are ``{"error", "error_description"}``: 400 for a malformed request, a missing
``Metadata`` header (``bad_request_102``), a refused header or ``Host``, an unknown identity
("Identity not found") or an identity Entra rejects for a configuration reason; 403
(``access_denied``) for a resource outside the allow list; 500 (``unknown``) when no token can
be had for a transient reason (clients retry 5xx).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from entra_tokend.endpoint.core import Ask, Kind, Refusal, SelectorKind
from entra_tokend.endpoint.guards import BROWSER, PROXY, guard
from entra_tokend.endpoint.params import parse_ask
from entra_tokend.httpserver import Request, Response
from entra_tokend.model import AccessToken, Identity

PATH = "/metadata/identity/oauth2/token"
API_VERSIONS = ("2018-02-01",)
SELECTORS = {
    "client_id": SelectorKind.CLIENT_ID,
    "object_id": SelectorKind.OBJECT_ID,
    "msi_res_id": SelectorKind.RESOURCE_ID,
}
ERRORS = {
    Kind.UNAUTHORIZED: (401, "unauthorized_client"),
    Kind.BAD_REQUEST: (400, "invalid_request"),
    Kind.UNKNOWN_IDENTITY: (400, "invalid_request"),
    Kind.FORBIDDEN: (403, "access_denied"),
    Kind.CONFIGURATION: (400, "invalid_request"),
    Kind.UNAVAILABLE: (500, "unknown"),
}


class Imds:
    """Parses and renders IMDS token requests; ``wall`` is the clock for ``expires_in``."""

    name = "imds"

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall

    def parse(self, request: Request, secret: bytes) -> Ask | Refusal:
        """The request's ``Ask``, or why it is refused (``secret`` is unused: IMDS has none)."""
        del secret
        refused = guard(request, BROWSER + PROXY)
        if refused is not None:
            return refused
        if request.headers.get("metadata", "").strip().lower() != "true":
            return Refusal(
                Kind.BAD_REQUEST, "Required metadata header not specified", {"header": "metadata"}
            )
        if request.query.get("api-version") not in API_VERSIONS:
            return Refusal(
                Kind.BAD_REQUEST,
                f"api-version must be {' or '.join(API_VERSIONS)}",
                {"parameter": "api-version"},
            )
        return parse_ask(request, SELECTORS)

    def render(
        self, request: Request, ask: Ask, token: AccessToken, identity: Identity
    ) -> Response:
        """The 200 answer: IMDS's fields, numbers as strings."""
        del request
        expires_on = int(token.expires_on)
        left = max(0, expires_on - int(self._wall()))
        body = {
            "access_token": token.token,
            "client_id": identity.client_id,
            "expires_in": str(left),
            "expires_on": str(expires_on),
            "ext_expires_in": str(left),
            "not_before": str(int(token.expires_on - token.expires_in)),
            "resource": ask.resource,
            "token_type": token.token_type or "Bearer",
        }
        return Response(200, json.dumps(body).encode(), "application/json")

    def refuse(self, request: Request, refusal: Refusal) -> Response:
        """The error answer: ``{"error", "error_description"}`` with IMDS's status."""
        del request
        status, error = ERRORS[refusal.kind]
        if refusal.message == "Required metadata header not specified":
            error = "bad_request_102"
        if refusal.kind is Kind.UNKNOWN_IDENTITY:
            description = f"Identity not found: {refusal.message}"
        else:
            description = refusal.message
        body = json.dumps({"error": error, "error_description": description}).encode()
        return Response(status, body, "application/json")
