"""The emulator's main listener: which path is which role, through public methods only.

* cluster issuer: ``GET /.well-known/openid-configuration``, ``GET /openid/v1/jwks``;
* Entra: ``POST /{tenant}/oauth2/v2.0/token``; discovery ``GET
  /{tenant}/v2.0/.well-known/openid-configuration``, ``/{tenant}/discovery/v2.0/keys``,
  ``/common/discovery/instance``;
* registry token service: ``POST /oauth2/exchange``, ``GET|POST /oauth2/token``, ``GET /v2/``;
* admin (loopback peers only, ``admin.py``): ``/_admin/*``.

Faults apply to the endpoints they target (``faults.py``); every request is recorded.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Protocol

from entra_tokend.emulator import errors, faults
from entra_tokend.emulator.admin import AdminApi, Administered
from entra_tokend.emulator.faults import ACR_CORRELATION_HEADER, FaultQueue, FaultTarget
from entra_tokend.emulator.recorder import RecordedRequest, Recorder
from entra_tokend.emulator.registry import AcrError
from entra_tokend.emulator.tenant import Tenant
from entra_tokend.emulator.wire import Endpoint, Outcome, Request, Response


class Routed(Administered, Protocol):
    """What the main listener's routes use of ``Emulator`` (declared here, so that this
    module does not import the facade that mounts it)."""

    faults: FaultQueue
    recorder: Recorder
    tenant: Tenant
    clock: Callable[[], float]

    @property
    def registry_realm(self) -> str: ...
    def new_correlation_id(self) -> str: ...
    def cluster_discovery(self) -> dict[str, Any]: ...
    def cluster_jwks(self) -> dict[str, Any]: ...
    def instance_discovery(self) -> dict[str, Any]: ...
    def entra_jwks(self) -> dict[str, Any]: ...
    def tenant_discovery(self) -> dict[str, Any]: ...


FAULT_TARGETS: dict[Endpoint, FaultTarget] = {
    Endpoint.TOKEN: "token",
    Endpoint.ACR_EXCHANGE: "acr_exchange",
    Endpoint.ACR_TOKEN: "acr_token",
}


def token_tenant(path: str) -> str | None:
    """The tenant of a ``/{tenant}/oauth2/v2.0/token`` path, else None."""
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"] and parts[0]:
        return parts[0]
    return None


def classify(req: Request) -> Endpoint:
    """What ``req`` is aimed at (method and path only)."""
    path = req.path.rstrip("/") or "/"
    if path.startswith("/_admin/"):
        return Endpoint.ADMIN
    if req.method == "POST" and token_tenant(path) is not None:
        return Endpoint.TOKEN
    if path == "/oauth2/exchange" and req.method == "POST":
        return Endpoint.ACR_EXCHANGE
    if path == "/oauth2/token":
        return Endpoint.ACR_TOKEN
    if path == "/v2":
        return Endpoint.REGISTRY
    parts = path.strip("/").split("/")
    if req.method == "GET" and (
        path in ("/.well-known/openid-configuration", "/openid/v1/jwks")
        or path == "/common/discovery/instance"
        or (len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"])
        or (len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"])
    ):
        return Endpoint.DISCOVERY
    return Endpoint.OTHER


def entra_answer(call: Callable[[], dict[str, Any]]) -> Response:
    """Run a tenant call: its body as 200, or Entra's error answer."""
    try:
        return Response.json(200, call())
    except errors.EntraError as err:
        return Response(err.status, err.encode(), headers=err.headers)


def basic_credentials(headers: dict[str, str] | Any) -> tuple[str, str] | None:
    """User and password of an ``Authorization: Basic`` header, else None."""
    scheme, _, value = str(headers.get("authorization", "")).partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class MainRoutes:
    """The ``wire.Service`` of the emulator's main listener."""

    def __init__(self, emu: Routed) -> None:
        self.emu = emu
        self.admin = AdminApi(emu)

    def serve(self, request: Request) -> tuple[Endpoint, Outcome]:
        """Classify, draw a fault for the endpoint if one is queued, else answer."""
        endpoint = classify(request)
        target = FAULT_TARGETS.get(endpoint)
        fault = self.emu.faults.take((target,)) if target is not None else None
        if fault is not None:
            lifetime = max(int(self.emu.access_token_lifetime), 1)
            normal = lambda: self.answer(request, endpoint)  # noqa: E731
            return endpoint, faults.apply(fault, normal, lifetime, request.form)
        return endpoint, self.answer(request, endpoint)

    def record(self, request: Request, endpoint: Endpoint, status: int) -> None:
        """Append the request to the emulator's recorder."""
        form = request.form() if request.method == "POST" and endpoint is not Endpoint.ADMIN else {}
        self.emu.recorder.record(
            RecordedRequest(
                time=self.emu.clock(),
                path=request.target,
                method=request.method,
                headers=dict(request.headers),
                form=form,
                status=status,
                peer=request.peer,
                endpoint=endpoint,
                server_name=request.server_name,
                query=request.query_dict(),
            )
        )

    def answer(self, req: Request, endpoint: Endpoint) -> Response:
        """The normal answer for ``req``."""
        emu = self.emu
        if endpoint is Endpoint.TOKEN:
            tenant = token_tenant(req.path) or ""
            return entra_answer(lambda: emu.tenant.handle_token_request(tenant, req.form()))
        if endpoint is Endpoint.DISCOVERY:
            return self._discovery(req.path.rstrip("/"))
        if endpoint in (Endpoint.ACR_EXCHANGE, Endpoint.ACR_TOKEN, Endpoint.REGISTRY):
            return self._registry(req, endpoint)
        if endpoint is Endpoint.ADMIN:
            return self.admin.handle(req)
        return Response.json(404, {"error": "not_found", "path": req.path.rstrip("/") or "/"})

    def _discovery(self, path: str) -> Response:
        emu = self.emu
        if path == "/.well-known/openid-configuration":
            return Response.json(200, emu.cluster_discovery())
        if path == "/openid/v1/jwks":
            doc = Response.json(200, emu.cluster_jwks())
            return Response(200, doc.body, "application/jwk-set+json")
        if path == "/common/discovery/instance":
            return Response.json(200, emu.instance_discovery())
        tenant = path.strip("/").split("/")[0]
        if not emu.tenant.known(tenant):
            return entra_answer(lambda: _raise(errors.tenant_not_found(tenant)))
        if path.endswith("/keys"):
            return Response.json(200, emu.entra_jwks())
        return Response.json(200, emu.tenant_discovery())

    def _registry(self, req: Request, endpoint: Endpoint) -> Response:
        service = self.emu.registries
        correlation = {ACR_CORRELATION_HEADER: self.emu.new_correlation_id()}
        try:
            if endpoint is Endpoint.ACR_EXCHANGE:
                body = service.exchange(req.form())
            elif endpoint is Endpoint.REGISTRY:
                headers, data = service.challenge(self.emu.registry_realm, req.headers.get("host"))
                return Response.json(401, data, {**headers, **correlation})
            elif req.method == "POST":
                body = service.token_from_form(req.form_pairs())
            else:
                body = service.token_from_basic(list(req.query), basic_credentials(req.headers))
        except AcrError as err:
            return Response.json(err.status, err.body(), correlation)
        return Response.json(200, body, correlation)


def _raise(err: Exception) -> dict[str, Any]:
    raise err
