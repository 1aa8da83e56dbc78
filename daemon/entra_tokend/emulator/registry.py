"""Azure Container Registry's token service, for one or more registries; no HTTP here.

The protocol (Azure/acr docs/AAD-OAuth.md; the Azure SDKs' container-registry
authentication clients):

* ``POST /oauth2/exchange``, form ``grant_type=access_token``, ``service=<registry>``,
  ``tenant=<tenant id>``, ``access_token=<Entra access token for
  https://containerregistry.azure.net>`` -> ``{"refresh_token": "<JWT>"}``. Only POST: ACR
  answers other methods 404 (Azure/acr issue 166).
* ``/oauth2/token`` -> ``{"access_token": "<JWT>"}`` (here also ``"token"``, which docker and
  skopeo read first), from an ACR refresh token sent as ``POST`` form
  (``grant_type=refresh_token``, ``service``, ``scope`` repeatable, ``refresh_token``) or as
  ``GET ?service=&scope=`` with HTTP Basic user ``00000000-0000-0000-0000-000000000000`` and
  the refresh token as password (what docker/skopeo send for a docker-config ``auth`` entry).
* Errors: ``{"errors": [{"code": ..., "message": ...}]}``, 401 ``UNAUTHORIZED`` for a bad
  credential, 403 ``DENIED`` for a missing role (the shapes in azure-sdk-for-js
  container-registry TROUBLESHOOTING.md). 400 ``UNSUPPORTED`` for malformed requests is the
  emulator's choice. Every answer carries ``X-Ms-Correlation-Request-Id``, as real ACR answers
  do in azure-sdk-for-js container-registry's recorded test traffic.
* Where the token service lives: ``az acr login`` (azure-cli acr ``_docker_utils.py``) gets
  ``GET https://<registry>/v2/``'s ``WWW-Authenticate: Bearer realm=...,service=...``
  challenge and posts to ``/oauth2/exchange`` on the *realm's* host with the challenge's
  ``service``. That is what lets a real ``docker-registry`` on one port use this service on
  the emulator's port: its challenge names the emulator as realm.

Registry access tokens are made for the CNCF distribution registry: ES256, ``kid`` = libtrust
fingerprint of a key whose self-signed certificate is the registry's ``rootcertbundle``,
``iss`` = ``Azure Container Registry``, ``aud`` = the service as one string, ``exp``/``nbf``,
and ``access`` granted from the requested scopes (shared/notes/real-tools.md).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entra_tokend.emulator._crypto import (
    EcSigningKey,
    decode_jwt,
    load_or_create_ec_key,
    write_public,
)
from entra_tokend.emulator.pki import pem, self_signed
from entra_tokend.emulator.tenant import AccessTokenInvalid

ACR_RESOURCE = "https://containerregistry.azure.net"
ACR_SCOPE = f"{ACR_RESOURCE}/.default"
ACR_NULL_USER = "00000000-0000-0000-0000-000000000000"
ACR_ISSUER = "Azure Container Registry"
DEFAULT_ACTIONS = ("pull", "push")
ANY_CLIENT = "*"


@dataclass(eq=False)
class AcrError(Exception):
    """An ACR token-service error: HTTP status, distribution-style ``code`` and message."""

    status: int
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        """``{"errors": [{"code": ..., "message": ...}]}``."""
        return {"errors": [{"code": self.code, "message": self.message}]}


def _bad_request(message: str) -> AcrError:
    return AcrError(400, "UNSUPPORTED", message)


def _unauthorized(message: str) -> AcrError:
    return AcrError(
        401,
        "UNAUTHORIZED",
        f"{message}, visit https://aka.ms/acr/authorization for more information.",
    )


@dataclass
class Registry:
    """One registry: its service name (``host[:port]``) and who may do what in it.

    ``grants`` maps a client id (``*``: any client of the tenant) to its actions.
    ``issued`` and ``revoked`` hold refresh-token ids (``jti``).
    """

    name: str
    grants: dict[str, frozenset[str]] = field(default_factory=dict)
    issued: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)

    def actions_for(self, client_id: str) -> frozenset[str] | None:
        """The actions ``client_id`` holds, or None without any role assignment."""
        return self.grants.get(client_id, self.grants.get(ANY_CLIENT))


@dataclass(frozen=True)
class RegistrySetup:
    """What a real CNCF distribution registry needs to trust the emulator as its token service.

    ``service`` is the registry's name as clients write it (``host:port``); it is also the
    ``aud`` of its access tokens. ``tls_cert``/``tls_key`` are a server certificate for
    ``host`` signed by the emulator's CA ``ca_file`` (which also covers the token realm).
    """

    service: str
    realm: str
    exchange_url: str
    issuer: str
    rootcertbundle: Path
    ca_file: Path
    tls_cert: Path
    tls_key: Path

    def distribution_config(self, storage: Path, *, addr: str | None = None) -> dict[str, Any]:
        """A ``docker-registry serve`` config (write it as JSON: YAML reads it) listening on
        ``addr`` (default: ``service``) with TLS and token authentication at the emulator."""
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}},
            "http": {
                "addr": addr or self.service,
                "tls": {"certificate": str(self.tls_cert), "key": str(self.tls_key)},
            },
            "auth": {
                "token": {
                    "realm": self.realm,
                    "service": self.service,
                    "issuer": self.issuer,
                    "rootcertbundle": str(self.rootcertbundle),
                }
            },
        }


class RegistryTokenService:
    """Issues ACR refresh tokens and registry access tokens for the registries it knows.

    ``verify_entra(token)`` returns an Entra access token's claims (audience
    ``ACR_RESOURCE``) or raises ``AccessTokenInvalid``. Lifetimes are seconds.
    """

    def __init__(
        self,
        directory: Path,
        *,
        verify_entra: Callable[[str], dict[str, Any]],
        refresh_token_lifetime: float = 10800.0,
        access_token_lifetime: float = 4500.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.clock = clock  # unix seconds: "now" for issued and checked tokens
        self.verify_entra = verify_entra
        # ~3 h: ACR's refresh-token lifetime; 75 min: the access token in Azure/acr
        # docs/AAD-OAuth.md's example claim set (exp - iat = 4500 s).
        self.refresh_token_lifetime = float(refresh_token_lifetime)
        self.access_token_lifetime = float(access_token_lifetime)
        self._lock = threading.Lock()
        self._registries: dict[str, Registry] = {}
        self._issued_refresh: list[str] = []
        self._issued_access: list[str] = []
        self._key: EcSigningKey | None = None

    # ----------------------------------------------------------------- setup
    @property
    def key(self) -> EcSigningKey:
        """The ES256 signing key (created in ``directory`` on first use)."""
        with self._lock:
            if self._key is None:
                self._key = EcSigningKey(
                    load_or_create_ec_key(self.directory / "signing-key.pem", "acr")
                )
                bundle = self.directory / "rootcertbundle.pem"
                write_public(bundle, pem(self_signed(self._key.private, ACR_ISSUER)))
            return self._key

    @property
    def rootcertbundle(self) -> Path:
        """PEM of a self-signed certificate for the signing key (distribution's
        ``auth.token.rootcertbundle``)."""
        _ = self.key
        return self.directory / "rootcertbundle.pem"

    def add(self, name: str, actions: Iterable[str] = DEFAULT_ACTIONS) -> Registry:
        """Serve registry ``name``; every client of the tenant holds ``actions`` in it."""
        registry = Registry(name, {ANY_CLIENT: frozenset(actions)})
        with self._lock:
            self._registries[name] = registry
        return registry

    def get(self, name: str) -> Registry | None:
        """The registry called ``name``, if served."""
        with self._lock:
            return self._registries.get(name)

    def names(self) -> list[str]:
        """Every registry served, in the order added."""
        with self._lock:
            return list(self._registries)

    def grant(self, name: str, client_id: str, actions: Iterable[str] | None) -> None:
        """Give ``client_id`` (``*``: everyone) ``actions`` in ``name``; None removes its
        role assignment (its exchange then earns 403 DENIED). ``KeyError`` if not served."""
        with self._lock:
            registry = self._registries[name]
            if actions is None:
                registry.grants.pop(client_id, None)
            else:
                registry.grants[client_id] = frozenset(actions)

    def revoke_refresh_tokens(self, name: str) -> None:
        """Reject every refresh token of ``name`` issued so far (later ones stay valid)."""
        with self._lock:
            registry = self._registries[name]
            registry.revoked |= registry.issued

    @property
    def issued_refresh_tokens(self) -> list[str]:
        """Every ACR refresh token handed out so far."""
        with self._lock:
            return list(self._issued_refresh)

    @property
    def issued_access_tokens(self) -> list[str]:
        """Every registry access token handed out so far."""
        with self._lock:
            return list(self._issued_access)

    # ----------------------------------------------------------------- /oauth2/exchange
    def exchange(self, form: dict[str, str]) -> dict[str, Any]:
        """``POST /oauth2/exchange``: Entra access token -> ``{"refresh_token": ...}``.

        Raises ``AcrError`` (400 malformed, 401 bad token or tenant, 403 no role).
        """
        grant = form.get("grant_type")
        if grant != "access_token":
            raise _bad_request(f"grant_type must be access_token, got {grant or 'nothing'}")
        registry = self._registry(form.get("service"))
        token = form.get("access_token")
        if not token:
            raise _bad_request("access_token is required")
        try:
            claims = self.verify_entra(token)
        except AccessTokenInvalid as exc:
            raise _unauthorized(f"invalid AAD access token: {exc}") from None
        tid = str(claims.get("tid", ""))
        tenant = form.get("tenant")
        if tenant and tenant.lower() != tid.lower():
            raise _unauthorized("the access token was issued by another tenant")
        client_id = str(claims.get("appid", ""))
        actions = registry.actions_for(client_id)
        if actions is None:
            raise AcrError(403, "DENIED", "retrieving permissions failed")
        now = int(self.clock())
        jti = str(uuid.uuid4())
        refresh = self.key.sign_jwt(
            {
                "jti": jti,
                "sub": str(claims.get("oid", client_id)),
                "nbf": now,
                "exp": now + max(int(self.refresh_token_lifetime), 1),
                "iat": now,
                "iss": ACR_ISSUER,
                "aud": registry.name,
                "version": "1.0",
                "grant_type": "refresh_token",
                "tenant": tid,
                "appid": client_id,
                "permissions": {"actions": sorted(actions), "notActions": []},
                "roles": [],
            }
        )
        with self._lock:
            self._issued_refresh.append(refresh)
            registry.issued.add(jti)
        return {"refresh_token": refresh}

    # ----------------------------------------------------------------- /oauth2/token
    def token(
        self, service: str | None, scopes: Iterable[str], refresh_token: str
    ) -> dict[str, Any]:
        """``/oauth2/token``: refresh token -> registry access token for ``scopes``.

        ``scopes`` are docker scopes (``repository:NAME:pull,push``); the answer grants each
        the requested actions the refresh token's holder has. Raises ``AcrError``.
        """
        registry = self._registry(service)
        claims = self._verify_refresh(registry, refresh_token)
        held = claims.get("permissions", {}).get("actions", [])
        access = [a for a in (_grant(s, set(held)) for s in scopes) if a is not None]
        now = int(self.clock())
        lifetime = max(int(self.access_token_lifetime), 1)
        token = self.key.sign_jwt(
            {
                "jti": str(uuid.uuid4()),
                "sub": claims.get("sub", ""),
                "nbf": now,
                "exp": now + lifetime,
                "iat": now,
                "iss": ACR_ISSUER,
                "aud": registry.name,
                "version": "1.0",
                "access": access,
                "roles": [],
                "grant_type": "refresh_token",
            }
        )
        with self._lock:
            self._issued_access.append(token)
        return {"access_token": token, "token": token, "expires_in": lifetime}

    def token_from_form(self, form_pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """``POST /oauth2/token`` with a urlencoded form (``scope`` may repeat)."""
        form = dict(form_pairs)
        if form.get("grant_type") != "refresh_token":
            raise _bad_request("grant_type must be refresh_token")
        refresh = form.get("refresh_token")
        if not refresh:
            raise _bad_request("refresh_token is required")
        scopes = [s for k, v in form_pairs if k == "scope" for s in v.split()]
        return self.token(form.get("service"), scopes, refresh)

    def token_from_basic(
        self, query: list[tuple[str, str]], credentials: tuple[str, str] | None
    ) -> dict[str, Any]:
        """``GET /oauth2/token?service=&scope=`` with Basic ``00000000-...:<refresh token>``."""
        if credentials is None:
            raise _unauthorized("authentication required")
        user, password = credentials
        if user != ACR_NULL_USER:
            raise _unauthorized("only the null user with an ACR refresh token is accepted")
        scopes = [s for k, v in query if k == "scope" for s in v.split()]
        return self.token(dict(query).get("service"), scopes, password)

    def challenge(self, realm: str, host: str | None) -> tuple[dict[str, str], dict[str, Any]]:
        """``GET /v2/`` without credentials: the Bearer challenge headers and error body.

        The service is the registry named by ``host`` if served, else the first added.
        """
        names = self.names()
        service = host if host in names else (names[0] if names else (host or ""))
        header = f'Bearer realm="{realm}",service="{service}"'
        headers = {"WWW-Authenticate": header, "Docker-Distribution-Api-Version": "registry/2.0"}
        body = {
            "errors": [
                {"code": "UNAUTHORIZED", "message": "authentication required", "detail": None}
            ]
        }
        return headers, body

    # ----------------------------------------------------------------- helpers
    def _registry(self, service: str | None) -> Registry:
        if not service:
            raise _bad_request("service is required")
        registry = self.get(service)
        if registry is None:
            raise _bad_request(f"service {service} is not a registry served here")
        return registry

    def _verify_refresh(self, registry: Registry, token: str) -> dict[str, Any]:
        try:
            _header, claims = decode_jwt(token)
        except ValueError:
            raise _unauthorized("malformed refresh token") from None
        if not self.key.verify_jwt(token) or claims.get("grant_type") != "refresh_token":
            raise _unauthorized("invalid refresh token")
        if claims.get("aud") != registry.name:
            raise _unauthorized("the refresh token is for another registry")
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, int) or now >= exp:
            raise _unauthorized("the refresh token has expired")
        with self._lock:
            revoked = claims.get("jti") in registry.revoked
        if revoked:
            raise _unauthorized("the refresh token has been revoked")
        return claims


def _grant(scope: str, held: set[str]) -> dict[str, Any] | None:
    """The ``access`` entry for one docker scope ``type:name:actions``, or None if malformed.

    The resource name may itself contain ``:`` only as part of a registry type's class, so
    the type is before the first ``:`` and the actions after the last one.
    """
    head, sep, actions = scope.rpartition(":")
    kind, sep2, name = head.partition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    wanted = [a for a in actions.split(",") if a]
    granted = [a for a in wanted if a in held or "*" in held]
    return {"type": kind, "name": name, "actions": granted}
