"""The App Service managed-identity protocol, versions 2019-08-01 and 2017-09-01, on one path.

2019-08-01 (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``; azure-identity, MSAL Python,
@azure/identity, msal-node)::

    GET /msi/token?api-version=2019-08-01&resource=R
        [&client_id=|object_id=|principal_id=|mi_res_id=]
    X-IDENTITY-HEADER: <secret>
    → {"access_token", "expires_on": "<unix seconds>", "resource", "token_type", "client_id"}

2017-09-01 (``MSI_ENDPOINT``/``MSI_SECRET``; go-autorest ``adal``, Azure ML clients)::

    GET /msi/token?api-version=2017-09-01&resource=R[&clientid=]
    secret: <secret>
    → {"access_token", "expires_on": "MM/dd/yyyy hh:mm:ss tt +00:00", "resource", "token_type"}

``expires_on`` of 2017-09-01 is a UTC date string (the documented example is
``"09/14/2017 00:00:00 PM +00:00"``; azure-identity's ``_parse_expires_on`` reads
``%m/%d/%Y %I:%M:%S %p`` before ``" +00:00"``). Errors of both are ``{"statusCode": N,
"message": "..."}`` — MSAL builds its error text from exactly those two fields. Status codes:
401 for the secret header; 400 for a malformed request, a ``Host`` that is not the loopback
listener, a browser's header (``Origin``, ``Sec-Fetch-Site``...; see ``guards``, checked
before the secret) or an unknown identity; 403 for a resource outside the allow list; 400 when Entra
rejects the identity for a configuration reason (SDKs do not retry a 4xx, so the app fails at
once with the AADSTS code); 500 otherwise.
"""

from __future__ import annotations

import hmac
import json
import time

from entra_tokend.endpoint.core import Ask, Kind, Refusal, SelectorKind
from entra_tokend.endpoint.guards import BROWSER, guard
from entra_tokend.endpoint.params import parse_ask
from entra_tokend.httpserver import Request, Response
from entra_tokend.model import AccessToken, Identity

PATH = "/msi/token"
"""``IDENTITY_ENDPOINT``/``MSI_ENDPOINT`` = ``http://127.0.0.1:PORT/msi/token``."""
API_VERSION = "2019-08-01"
LEGACY_API_VERSION = "2017-09-01"

SELECTORS_2019 = {
    "client_id": SelectorKind.CLIENT_ID,
    "object_id": SelectorKind.OBJECT_ID,
    "principal_id": SelectorKind.OBJECT_ID,
    "mi_res_id": SelectorKind.RESOURCE_ID,
}
SELECTORS_2017 = {"clientid": SelectorKind.CLIENT_ID}

STATUS = {
    Kind.UNAUTHORIZED: 401,
    Kind.BAD_REQUEST: 400,
    Kind.UNKNOWN_IDENTITY: 400,
    Kind.FORBIDDEN: 403,
    Kind.CONFIGURATION: 400,
    Kind.UNAVAILABLE: 500,
}


def _secret_refusal(request: Request, header: str, secret: bytes) -> Refusal | None:
    sent = request.headers.get(header.lower())
    if sent is None:
        return Refusal(Kind.UNAUTHORIZED, f"{header} is missing")
    if not hmac.compare_digest(sent.encode("latin-1"), secret):
        return Refusal(Kind.UNAUTHORIZED, f"{header} is wrong")
    return None


class AppService:
    """Both versions: ``parse`` picks the version by ``api-version`` (2017-09-01, or
    2019-08-01 for anything else, which then refuses a wrong version)."""

    name = "appservice"

    def legacy(self, request: Request) -> bool:
        """True when the request speaks 2017-09-01."""
        return request.query.get("api-version") == LEGACY_API_VERSION

    def parse(self, request: Request, secret: bytes) -> Ask | Refusal:
        """The request's ``Ask``, or why it is refused (the secret first)."""
        legacy = self.legacy(request)
        refused = guard(request, BROWSER)
        if refused is not None:
            return refused
        denied = _secret_refusal(request, "secret" if legacy else "X-IDENTITY-HEADER", secret)
        if denied is not None:
            return denied
        if not legacy and request.query.get("api-version") != API_VERSION:
            return Refusal(
                Kind.BAD_REQUEST,
                f"api-version must be {API_VERSION} (or {LEGACY_API_VERSION} with the secret "
                "header)",
                {"parameter": "api-version"},
            )
        return parse_ask(request, SELECTORS_2017 if legacy else SELECTORS_2019)

    def render(
        self, request: Request, ask: Ask, token: AccessToken, identity: Identity
    ) -> Response:
        """The 200 answer of the request's version."""
        body: dict[str, str] = {
            "access_token": token.token,
            "expires_on": str(int(token.expires_on)),
            "resource": ask.resource,
            "token_type": token.token_type or "Bearer",
        }
        if self.legacy(request):
            body["expires_on"] = legacy_expires_on(token.expires_on)
        else:
            body["client_id"] = identity.client_id
        return Response(200, json.dumps(body).encode(), "application/json")

    def refuse(self, request: Request, refusal: Refusal) -> Response:
        """The error answer: ``{"statusCode", "message"}`` with the kind's status."""
        status = STATUS[refusal.kind]
        body = json.dumps({"statusCode": status, "message": refusal.message}).encode()
        return Response(status, body, "application/json")


def legacy_expires_on(expires_on: float) -> str:
    """Unix seconds as 2017-09-01's ``MM/dd/yyyy hh:mm:ss tt +00:00`` (UTC, 12-hour clock,
    AM/PM spelled out independently of the process's locale)."""
    t = time.gmtime(int(expires_on))
    hour = t.tm_hour % 12 or 12
    half = "AM" if t.tm_hour < 12 else "PM"
    return (
        f"{t.tm_mon:02d}/{t.tm_mday:02d}/{t.tm_year:04d} "
        f"{hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {half} +00:00"
    )
