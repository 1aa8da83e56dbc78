"""The emulated Entra tenant: app registrations, federated credentials, token validation.

No HTTP here: ``Tenant.handle_token_request(tenant, form)`` takes the form fields of a
``POST /{tenant}/oauth2/v2.0/token`` and returns the success body or raises
``errors.EntraError`` with the status, OAuth ``error`` and AADSTS code Entra gives, checking
in Entra's order: tenant, grant type, client, scope, credential, assertion (format, signing
key, signature, validity window), then the federated credential (issuer, subject, audience).

Identity bindings: a credential marked ``identity_binding`` matches only requests that came
through the identity-binding proxy (the proxy calls in with ``via_identity_binding=True``,
an in-process flag no HTTP client can set), and ordinary credentials only direct requests.
So the same assertion sent straight to Entra matches nothing of the binding's.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from entra_tokend.emulator import errors
from entra_tokend.emulator._crypto import SigningKey, b64url, decode_jwt
from entra_tokend.emulator.issuer import IDENTITY_BINDING_AUDIENCE, TOKEN_EXCHANGE_AUDIENCE

GRANT_CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Entra tolerates a few minutes of clock skew on ``nbf``; ``exp`` is applied as is.
NBF_SKEW = 300.0


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential on an app registration.

    An empty ``issuer`` means "the emulated cluster's issuer", resolved at request time.
    ``identity_binding`` credentials match only requests forwarded by the proxy.
    """

    issuer: str
    subject: str
    audiences: tuple[str, ...] = (TOKEN_EXCHANGE_AUDIENCE,)
    identity_binding: bool = False


@dataclass
class App:
    """An app registration (or user-assigned identity) in the emulated tenant."""

    client_id: str
    object_id: str
    credentials: list[FederatedCredential] = field(default_factory=list)


class AccessTokenInvalid(Exception):
    """An access token this tenant did not issue, or not for this use; ``str()`` says why."""


class Tenant:
    """One Entra tenant. ``cluster_issuer`` resolves empty credential issuers; ``assertion_key``
    returns the key whose JWKS Entra would fetch for the cluster issuer; ``load_keys`` must
    run before tokens are issued."""

    def __init__(
        self,
        tenant_id: str,
        *,
        authority_host: Callable[[], str],
        cluster_issuer: Callable[[], str],
        assertion_key: Callable[[], SigningKey],
        access_token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant_id = tenant_id
        self.clock = clock  # unix seconds: what "now" is for validity windows and tokens
        self.authority_host = authority_host
        self.cluster_issuer = cluster_issuer
        self.assertion_key = assertion_key
        self.access_token_lifetime = float(access_token_lifetime)
        self._lock = threading.Lock()
        self._apps: dict[str, App] = {}
        self._rejected: set[str] = set()
        self._issued: list[str] = []
        self._key: SigningKey | None = None

    def load_keys(self, key: SigningKey) -> None:
        """Use ``key`` to sign access tokens."""
        self._key = key

    @property
    def key(self) -> SigningKey:
        """The access-token signing key; ``RuntimeError`` before ``load_keys``."""
        if self._key is None:
            raise RuntimeError("emulator not started")
        return self._key

    # ----------------------------------------------------------------- directory
    def has_app(self, client_id: str) -> bool:
        """True when ``client_id`` is registered."""
        with self._lock:
            return client_id in self._apps

    def add_app(self, client_id: str, credentials: list[FederatedCredential]) -> App:
        """Register (or replace) an app with ``credentials``."""
        app = App(client_id=client_id, object_id=str(uuid.uuid4()), credentials=credentials)
        with self._lock:
            self._apps[client_id] = app
        return app

    def add_credential(self, client_id: str, credential: FederatedCredential) -> None:
        """Add a federated credential to a registered app; ``KeyError`` if unknown."""
        with self._lock:
            self._apps[client_id].credentials.append(credential)

    def remove_app(self, client_id: str) -> None:
        """Delete an app registration (its requests then earn AADSTS700016)."""
        with self._lock:
            self._apps.pop(client_id, None)

    def reject_assertion(self, assertion: str) -> None:
        """Answer AADSTS700024 to every later request carrying ``assertion``."""
        with self._lock:
            self._rejected.add(_fingerprint(assertion))

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far."""
        with self._lock:
            return list(self._issued)

    def known(self, tenant: str) -> bool:
        """True when ``tenant`` names this tenant (GUIDs compare case-insensitively)."""
        return tenant.lower() == self.tenant_id.lower()

    # ----------------------------------------------------------------- token endpoint
    def handle_token_request(
        self, tenant: str, form: dict[str, str], *, via_identity_binding: bool = False
    ) -> dict[str, Any]:
        """Validate a client-credentials request like Entra; return the 200 JSON body.

        Raises ``errors.EntraError`` for every rejection.
        """
        if not self.known(tenant):
            raise errors.tenant_not_found(tenant)
        grant = form.get("grant_type")
        if not grant:
            raise errors.missing_parameter("grant_type")
        if grant != GRANT_CLIENT_CREDENTIALS:
            raise errors.unsupported_grant_type(grant)
        client_id = form.get("client_id")
        if not client_id:
            raise errors.missing_parameter("client_id")
        with self._lock:
            app = self._apps.get(client_id)
        if app is None:
            raise errors.app_not_found(client_id, tenant)
        scope = form.get("scope")
        if scope is None or not scope.strip():
            raise errors.missing_parameter("scope")
        resource = resource_of(scope)
        assertion = form.get("client_assertion")
        if not assertion:
            raise errors.missing_credential()
        assertion_type = form.get("client_assertion_type")
        if not assertion_type:
            raise errors.missing_parameter("client_assertion_type")
        if assertion_type != JWT_BEARER:
            raise errors.invalid_assertion_type()
        claims = self._verify_assertion(assertion)
        self._match_credential(app, claims, via_identity_binding)
        return self._issue_access_token(app, resource)

    def _verify_assertion(self, assertion: str) -> dict[str, Any]:
        try:
            header, claims = decode_jwt(assertion)
        except ValueError:
            raise errors.assertion_malformed() from None
        key = self.assertion_key()
        kid = str(header.get("kid", ""))
        if kid != key.kid:
            raise errors.signing_key_unknown(kid, str(claims.get("iss", "")))
        if not key.verify_jwt(assertion):
            raise errors.assertion_bad_signature()
        now = self.clock()
        exp = _number(claims.get("exp"))
        nbf = _number(claims.get("nbf"))
        with self._lock:
            rejected = _fingerprint(assertion) in self._rejected
        if rejected or exp is None or now >= exp or (nbf is not None and now + NBF_SKEW < nbf):
            raise errors.assertion_expired(now, nbf, exp)
        return claims

    def _match_credential(self, app: App, claims: dict[str, Any], via_binding: bool) -> None:
        iss = str(claims.get("iss", ""))
        sub = str(claims.get("sub", ""))
        raw_aud = claims.get("aud")
        auds = [raw_aud] if isinstance(raw_aud, str) else [str(a) for a in raw_aud or []]
        with self._lock:
            creds = [
                FederatedCredential(c.issuer or self.cluster_issuer(), c.subject, c.audiences)
                for c in app.credentials
                if c.identity_binding == via_binding
            ]
        if not creds:
            raise errors.no_federated_credential(iss, sub, ",".join(auds))
        # Entra compares case-sensitively, issuer first, then subject, then audience.
        by_issuer = [c for c in creds if c.issuer == iss]
        if not by_issuer:
            raise errors.issuer_mismatch(iss)
        by_subject = [c for c in by_issuer if c.subject == sub]
        if not by_subject:
            raise errors.subject_mismatch(sub)
        if not any(a in c.audiences for c in by_subject for a in auds):
            raise errors.audience_mismatch(",".join(auds))

    def _issue_access_token(self, app: App, resource: str) -> dict[str, Any]:
        lifetime = max(int(self.access_token_lifetime), 1)
        now = int(self.clock())
        claims = {
            "aud": resource,
            "iss": self.sts_issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "aio": b64url(secrets.token_bytes(24)),
            "appid": app.client_id,
            "appidacr": "2",
            "idp": self.sts_issuer,
            "idtyp": "app",
            "oid": app.object_id,
            "rh": "0.emulated.",
            "sub": app.object_id,
            "tid": self.tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        token = self.key.sign_jwt(claims, {"x5t": self.key.kid})
        with self._lock:
            self._issued.append(token)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
        }
        if lifetime >= 7200:
            body["refresh_in"] = lifetime // 2
        body["access_token"] = token
        return body

    @property
    def sts_issuer(self) -> str:
        """The ``iss`` of v1.0 access tokens: https://sts.windows.net/{tenant}/."""
        return f"https://sts.windows.net/{self.tenant_id}/"

    def verify_access_token(self, token: str, *, audience: str) -> dict[str, Any]:
        """The claims of an access token this tenant issued for ``audience``, unexpired.

        Raises ``AccessTokenInvalid`` naming the failed check (never quoting the token).
        """
        try:
            _header, claims = decode_jwt(token)
        except ValueError:
            raise AccessTokenInvalid("malformed token") from None
        if not self.key.verify_jwt(token):
            raise AccessTokenInvalid("signature does not verify with the tenant's keys")
        if claims.get("iss") != self.sts_issuer or claims.get("tid") != self.tenant_id:
            raise AccessTokenInvalid("issued by another tenant")
        if claims.get("aud") != audience:
            raise AccessTokenInvalid(f"audience is not {audience}")
        exp = _number(claims.get("exp"))
        if exp is None or self.clock() >= exp:
            raise AccessTokenInvalid("token expired")
        return claims

    # ----------------------------------------------------------------- documents
    def jwks(self) -> dict[str, Any]:
        """The JWKS that verifies issued access tokens."""
        jwk = self.key.jwk()
        jwk["x5t"] = jwk["kid"]
        jwk["issuer"] = f"{self.authority_host()}/{self.tenant_id}/v2.0"
        return {"keys": [jwk]}

    def discovery(self) -> dict[str, Any]:
        """``/{tenant}/v2.0/.well-known/openid-configuration``."""
        base = f"{self.authority_host()}/{self.tenant_id}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "emulator.local",
        }

    def instance_discovery(self) -> dict[str, Any]:
        """``/common/discovery/instance`` as MSAL's instance discovery expects it."""
        host = self.authority_host()
        netloc = urlsplit(host).netloc
        return {
            "tenant_discovery_endpoint": (
                f"{host}/{self.tenant_id}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [
                {"preferred_network": netloc, "preferred_cache": netloc, "aliases": [netloc]}
            ],
        }


def credential(
    *,
    issuer: str | None,
    subject: str,
    audience: str | None,
    identity_binding: bool = False,
) -> FederatedCredential:
    """A credential with the defaults of its kind (identity bindings: the binding audience)."""
    default = IDENTITY_BINDING_AUDIENCE if identity_binding else TOKEN_EXCHANGE_AUDIENCE
    return FederatedCredential(
        issuer=issuer if issuer is not None else "",
        subject=subject,
        audiences=(audience if audience is not None else default,),
        identity_binding=identity_binding,
    )


def resource_of(scope: str) -> str:
    """The resource of a client-credentials ``scope`` (``<resource>/.default``).

    Raises ``errors.EntraError``: AADSTS70011 for several scopes, AADSTS1002012 without
    ``/.default``.
    """
    scopes = scope.split()
    if len(scopes) > 1:
        raise errors.scope_invalid(scope)
    single = scopes[0]
    if not single.endswith("/.default"):
        raise errors.scope_not_default(single)
    resource = single[: -len("/.default")]
    if not resource:
        raise errors.scope_invalid(single)
    return resource


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
