"""The emulated cluster and Entra tenant, served over HTTP(S) from a background thread.

One ``Emulator`` is three things at once:

* a Kubernetes cluster's service-account token issuer: an RSA key, OIDC discovery and JWKS
  at the root (``/.well-known/openid-configuration``, ``/openid/v1/jwks``), and the projected
  token written with kubelet's AtomicWriter sequence (``kubelet.ProjectedVolume``);
* an Entra tenant: ``POST /{tenant}/oauth2/v2.0/token`` validating a client-credentials
  request with a federated assertion the way Entra does, answering with Entra's bodies,
  plus the discovery documents MSAL fetches and a JWKS for the issued access tokens;
* a fault injector and request recorder for resilience tests (Python API and ``/_admin``).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, urlsplit

from entra_tokend.emulator import errors
from entra_tokend.emulator._crypto import (
    SigningKey,
    TlsFiles,
    b64url,
    b64url_decode,
    cached_key,
    load_or_create_key,
    make_tls,
)
from entra_tokend.emulator.kubelet import ProjectedVolume

FaultKind = Literal[
    "status", "delay", "reset", "html", "non_json", "no_access_token", "no_expires_in", "hang"
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

GRANT_CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"  # noqa: S105 - an audience, not a secret
# Entra tolerates a few minutes of clock skew on ``nbf``; ``exp`` is applied as is.
NBF_SKEW = 300.0
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, applied to the next ``count`` token requests.

    ``status`` is the HTTP status for kind "status" (default 500) and "html" (default 502);
    "non_json", "no_access_token" and "no_expires_in" answer 200 unless ``status`` is given.
    "delay" waits ``delay`` seconds then answers normally; "hang" holds the connection
    without answering until ``stop()`` (or ``delay`` seconds when positive), then closes it;
    "reset" aborts the connection with a TCP RST and no answer.
    """

    kind: FaultKind
    count: int = 1
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    error: str | None = None
    aadsts: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}"
            )
        if self.count < 1:
            raise ValueError("fault count must be at least 1")
        if self.delay < 0:
            raise ValueError("fault delay must not be negative")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build a fault from the admin endpoint's JSON object."""
        allowed = {"kind", "count", "status", "retry_after", "delay", "error", "aadsts"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {sorted(FAULT_KINDS)}")
        retry_after = data.get("retry_after")
        return cls(
            kind=kind,  # type: ignore[arg-type]  # checked against FAULT_KINDS above
            count=int(data.get("count", 1)),
            status=None if data.get("status") is None else int(data["status"]),
            retry_after=None if retry_after is None else str(retry_after),
            delay=float(data.get("delay", 0.0)),
            error=None if data.get("error") is None else str(data["error"]),
            aadsts=None if data.get("aadsts") is None else int(data["aadsts"]),
        )


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received. ``status`` is 0 when it was reset or hung.

    ``headers`` and ``form`` hold secrets (the assertion), so they stay out of ``repr``.
    """

    time: float
    path: str
    method: str
    headers: dict[str, str] = field(repr=False)
    form: dict[str, str] = field(repr=False)
    status: int
    peer: tuple[str, int] | None = None


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential on an app registration."""

    issuer: str
    subject: str
    audiences: tuple[str, ...] = (TOKEN_EXCHANGE_AUDIENCE,)


@dataclass
class App:
    """An app registration (or user-assigned identity) in the emulated tenant."""

    client_id: str
    object_id: str
    credentials: list[FederatedCredential] = field(default_factory=list)


class Emulator:
    """A local Entra tenant plus Kubernetes service-account issuer; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        token_ttl: float = 3600.0,
        rotate_every: float | None = None,
        access_token_lifetime: float = 3600.0,
        tenant_id: str | None = None,
        client_id: str | None = None,
        namespace: str = "default",
        service_account: str = "workload",
        verbose: bool = False,
    ) -> None:
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        if rotate_every is not None and rotate_every <= 0:
            raise ValueError("rotate_every must be positive")
        self.state_dir = Path(state_dir).absolute()
        self.host = host
        self.port = port
        self.tls = tls
        self.token_ttl = float(token_ttl)
        self.rotate_every = rotate_every
        self.access_token_lifetime = float(access_token_lifetime)
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.client_id = client_id or str(uuid.uuid4())
        self.namespace = namespace
        self.service_account = service_account
        self.verbose = verbose
        self.volume = ProjectedVolume(self.state_dir / "serviceaccount")
        self._lock = threading.Lock()
        self._rotate_lock = threading.Lock()
        self._requests_changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._issued: list[str] = []
        self._faults: deque[list[Any]] = deque()  # [Fault, remaining]
        self._rejected: set[str] = set()
        self._apps: dict[str, App] = {}
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._tls_files: TlsFiles | None = None
        self._cluster_key: SigningKey | None = None
        self._entra_key: SigningKey | None = None
        self._foreign_key: SigningKey | None = None
        self._pod_uid = str(uuid.uuid4())
        self._sa_uid = str(uuid.uuid4())

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Emulator:
        """Bind, write the first projected token, and serve from background threads."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        keys = self.state_dir / "keys"
        self._cluster_key = SigningKey(load_or_create_key(keys / "cluster-sa.pem", "cluster"))
        self._entra_key = SigningKey(load_or_create_key(keys / "entra.pem", "entra"))
        context: ssl.SSLContext | None = None
        if self.tls:
            self._tls_files = make_tls(self.state_dir / "tls")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self._tls_files.server_cert, self._tls_files.server_key)
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self, context)
        self.port = self._server.server_address[1]
        if self.client_id not in self._apps:
            self.add_app(self.client_id)
        self.rotate()
        serve = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="entra-emulator-http",
            daemon=True,
        )
        serve.start()
        self._threads = [serve]
        if self.rotate_every is not None:
            rot = threading.Thread(
                target=self._rotate_loop, name="entra-emulator-rotate", daemon=True
            )
            rot.start()
            self._threads.append(rot)
        return self

    def stop(self) -> None:
        """Stop serving, drop every open connection, and join the background threads."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            # Wakes handler threads parked on keep-alive reads; clients see the close.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        self._server = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _rotate_loop(self) -> None:
        assert self.rotate_every is not None
        while not self._stopping.wait(self.rotate_every):
            self.rotate()

    # ----------------------------------------------------------------- addresses
    @property
    def authority_host(self) -> str:
        """Base URL of the emulated Entra (and cluster issuer), without a trailing slash."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if self.host == "0.0.0.0" else "[::1]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def issuer(self) -> str:
        """The cluster's service-account issuer URL (what ``iss`` holds in projected tokens)."""
        return self.authority_host

    @property
    def token_endpoint(self) -> str:
        """The v2 token endpoint URL for this tenant."""
        return f"{self.authority_host}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def subject(self) -> str:
        """The projected token's ``sub``: system:serviceaccount:NS:SA."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def token_file(self) -> Path:
        """The user-visible projected token path (a symlink into ``..data``)."""
        return self.volume.path

    @property
    def ca_file(self) -> Path | None:
        """PEM of the generated CA when serving TLS, else None."""
        return self._tls_files.ca_cert if self._tls_files else None

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context that trusts the generated CA (for httpx ``verify=``), or None."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    # ----------------------------------------------------------------- cluster
    def issue_assertion(
        self,
        ttl: float | None = None,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        audience: str | list[str] | None = None,
        expired: bool = False,
        not_before: float | None = None,
        untrusted_key: bool = False,
    ) -> str:
        """Sign a projected service-account token without writing it.

        ``untrusted_key`` signs with a key absent from the cluster's JWKS.
        """
        key = self._signing_key(untrusted_key)
        lifetime = float(ttl if ttl is not None else self.token_ttl)
        now = time.time()
        iat = now - lifetime - 60 if expired else now
        exp = iat + lifetime
        aud = audience if audience is not None else [TOKEN_EXCHANGE_AUDIENCE]
        claims: dict[str, Any] = {
            "aud": aud,
            "exp": int(exp),
            "iat": int(iat),
            "iss": issuer if issuer is not None else self.issuer,
            # Kubernetes >= 1.29 gives each token a jti; it also makes every rotation unique.
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": self.namespace,
                "pod": {"name": f"{self.service_account}-emulated", "uid": self._pod_uid},
                "serviceaccount": {"name": self.service_account, "uid": self._sa_uid},
            },
            "nbf": int(not_before if not_before is not None else iat),
            "sub": subject if subject is not None else self.subject,
        }
        return key.sign_jwt(claims)

    def rotate(self, ttl: float | None = None, *, expired: bool = False) -> str:
        """Issue a new projected token and publish it with kubelet's write sequence."""
        token = self.issue_assertion(ttl, expired=expired)
        with self._rotate_lock:  # the background rotator and callers must not interleave
            self.volume.write(token)
        return token

    def _signing_key(self, untrusted: bool) -> SigningKey:
        if self._cluster_key is None:
            raise RuntimeError("emulator not started")
        if not untrusted:
            return self._cluster_key
        if self._foreign_key is None:
            self._foreign_key = SigningKey(cached_key("untrusted"))
        return self._foreign_key

    # ----------------------------------------------------------------- tenant
    def add_app(
        self,
        client_id: str,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        audience: str | None = None,
        federated: bool = True,
    ) -> App:
        """Register an app with one federated credential (defaults: this cluster's SA).

        ``federated=False`` registers the app with no federated credential at all.
        Defaults for ``issuer`` are resolved at request time, so this works before start().
        """
        app = App(client_id=client_id, object_id=str(uuid.uuid4()))
        if federated:
            app.credentials.append(
                FederatedCredential(
                    issuer=issuer if issuer is not None else "",
                    subject=subject if subject is not None else self.subject,
                    audiences=(audience if audience is not None else TOKEN_EXCHANGE_AUDIENCE,),
                )
            )
        with self._lock:
            self._apps[client_id] = app
        return app

    def add_federated_credential(
        self,
        client_id: str,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        audience: str | None = None,
    ) -> None:
        """Add another federated credential to a registered app."""
        with self._lock:
            app = self._apps[client_id]
            app.credentials.append(
                FederatedCredential(
                    issuer=issuer if issuer is not None else "",
                    subject=subject if subject is not None else self.subject,
                    audiences=(audience if audience is not None else TOKEN_EXCHANGE_AUDIENCE,),
                )
            )

    def remove_app(self, client_id: str) -> None:
        """Delete an app registration (its requests then earn AADSTS700016)."""
        with self._lock:
            self._apps.pop(client_id, None)

    def reject_current_assertion_as_expired(self) -> None:
        """Answer AADSTS700024 to requests carrying the projected token now on disk."""
        token = self.token_file.read_text().strip()
        with self._lock:
            self._rejected.add(_fingerprint(token))

    # ----------------------------------------------------------------- faults
    def inject(self, *faults: Fault) -> None:
        """Queue faults (FIFO); each applies to its next ``count`` token requests."""
        with self._lock:
            for f in faults:
                self._faults.append([f, f.count])

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """How many token requests the queued faults will still affect."""
        with self._lock:
            return sum(int(entry[1]) for entry in self._faults)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if not self._faults:
                return None
            entry = self._faults[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._faults.popleft()
            fault: Fault = entry[0]
            return fault

    # ----------------------------------------------------------------- recording
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a snapshot)."""
        with self._lock:
            return list(self._requests)

    def token_requests(self) -> list[RecordedRequest]:
        """The POSTs to a token endpoint received so far."""
        with self._lock:
            return [r for r in self._requests if _is_token_request(r)]

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far."""
        with self._lock:
            return list(self._issued)

    def wait_for_requests(self, n: int, timeout: float) -> list[RecordedRequest]:
        """Block until at least ``n`` token requests arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._requests_changed:
            while True:
                got = [r for r in self._requests if _is_token_request(r)]
                if len(got) >= n:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"emulator saw {len(got)} token requests, expected {n} within {timeout}s"
                    )
                self._requests_changed.wait(remaining)

    def _record(self, rec: RecordedRequest) -> None:
        with self._requests_changed:
            self._requests.append(rec)
            self._requests_changed.notify_all()

    # ----------------------------------------------------------------- environment
    def env(self) -> dict[str, str]:
        """The environment a workload-identity pod would get, pointing at this emulator."""
        env = {
            "AZURE_TENANT_ID": self.tenant_id,
            "AZURE_CLIENT_ID": self.client_id,
            "AZURE_FEDERATED_TOKEN_FILE": str(self.token_file),
            "AZURE_AUTHORITY_HOST": self.authority_host,
        }
        if self.ca_file is not None:
            env["SSL_CERT_FILE"] = str(self.ca_file)
            env["REQUESTS_CA_BUNDLE"] = str(self.ca_file)
        return env

    def write_env_file(self, path: Path) -> Path:
        """Write ``env()`` as shell-sourceable ``KEY='value'`` lines (for ``set -a; . FILE``)."""
        path = Path(path)
        lines = [f"{k}={_shell_quote(v)}\n" for k, v in self.env().items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(lines))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path

    # ----------------------------------------------------------------- documents
    def cluster_discovery(self) -> dict[str, Any]:
        """The cluster issuer's OIDC discovery document (as kube-apiserver serves it)."""
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def cluster_jwks(self) -> dict[str, Any]:
        """The JWKS that verifies projected tokens."""
        assert self._cluster_key is not None
        return {"keys": [self._cluster_key.jwk()]}

    def entra_jwks(self) -> dict[str, Any]:
        """The JWKS that verifies issued access tokens."""
        assert self._entra_key is not None
        jwk = self._entra_key.jwk()
        jwk["x5t"] = jwk["kid"]
        jwk["issuer"] = f"{self.authority_host}/{self.tenant_id}/v2.0"
        return {"keys": [jwk]}

    def tenant_discovery(self) -> dict[str, Any]:
        """``/{tenant}/v2.0/.well-known/openid-configuration``."""
        base = f"{self.authority_host}/{self.tenant_id}"
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
        netloc = urlsplit(self.authority_host).netloc
        return {
            "tenant_discovery_endpoint": (
                f"{self.authority_host}/{self.tenant_id}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [
                {"preferred_network": netloc, "preferred_cache": netloc, "aliases": [netloc]}
            ],
        }

    # ----------------------------------------------------------------- token endpoint
    def _known_tenant(self, tenant: str) -> bool:
        return tenant.lower() == self.tenant_id.lower()

    def handle_token_request(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Validate a token request like Entra; return (status, JSON body).

        Raises ``errors.EntraError`` for every rejection.
        """
        if not self._known_tenant(tenant):
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
        resource = _resource_of(scope)
        assertion = form.get("client_assertion")
        if not assertion:
            raise errors.missing_credential()
        assertion_type = form.get("client_assertion_type")
        if not assertion_type:
            raise errors.missing_parameter("client_assertion_type")
        if assertion_type != JWT_BEARER:
            raise errors.invalid_assertion_type()
        claims = self._verify_assertion(assertion)
        self._match_credential(app, claims)
        return 200, self._issue_access_token(app, resource)

    def _verify_assertion(self, assertion: str) -> dict[str, Any]:
        parts = assertion.split(".")
        if len(parts) != 3:
            raise errors.assertion_malformed()
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
        except ValueError:
            raise errors.assertion_malformed() from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise errors.assertion_malformed()
        assert self._cluster_key is not None
        kid = str(header.get("kid", ""))
        if kid != self._cluster_key.kid:
            raise errors.signing_key_unknown(kid, str(claims.get("iss", "")))
        if not self._cluster_key.verify_jwt(assertion):
            raise errors.assertion_bad_signature()
        now = time.time()
        exp = claims.get("exp")
        nbf = claims.get("nbf")
        exp_f = float(exp) if isinstance(exp, int | float) else None
        nbf_f = float(nbf) if isinstance(nbf, int | float) else None
        with self._lock:
            rejected = _fingerprint(assertion) in self._rejected
        if (
            rejected
            or exp_f is None
            or now >= exp_f
            or (nbf_f is not None and now + NBF_SKEW < nbf_f)
        ):
            raise errors.assertion_expired(now, nbf_f, exp_f)
        return claims

    def _match_credential(self, app: App, claims: dict[str, Any]) -> None:
        iss = str(claims.get("iss", ""))
        sub = str(claims.get("sub", ""))
        raw_aud = claims.get("aud")
        auds = [raw_aud] if isinstance(raw_aud, str) else [str(a) for a in raw_aud or []]
        with self._lock:
            creds = [
                FederatedCredential(c.issuer or self.issuer, c.subject, c.audiences)
                for c in app.credentials
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
        assert self._entra_key is not None
        lifetime = max(int(self.access_token_lifetime), 1)
        now = int(time.time())
        sts = f"https://sts.windows.net/{self.tenant_id}/"
        claims = {
            "aud": resource,
            "iss": sts,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "aio": b64url(secrets.token_bytes(24)),
            "appid": app.client_id,
            "appidacr": "2",
            "idp": sts,
            "idtyp": "app",
            "oid": app.object_id,
            "rh": "0.emulated.",
            "sub": app.object_id,
            "tid": self.tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        token = self._entra_key.sign_jwt(claims, {"x5t": self._entra_key.kid})
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


# --------------------------------------------------------------------- helpers
def is_loopback_peer(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (IPv4-mapped loopback included); admin needs this."""
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _is_token_request(rec: RecordedRequest) -> bool:
    return rec.method == "POST" and _token_tenant(rec.path) is not None


def _token_tenant(path: str) -> str | None:
    parts = urlsplit(path).path.strip("/").split("/")
    if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"] and parts[0]:
        return parts[0]
    return None


def _resource_of(scope: str) -> str:
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], emulator: Emulator, context: ssl.SSLContext | None
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self.ssl_context = context
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the handler's thread, not in the accept loop.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.emulator.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "entra-tokend-emulator"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server
    # (method, lower-case headers, form) of the request being answered; recorded once.
    _pending: tuple[str, dict[str, str], dict[str, str]] | None = None

    def setup(self) -> None:
        super().setup()
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            conn.settimeout(10)
            conn.do_handshake()
            conn.settimeout(None)
        with self.emu._lock:
            self.emu._connections.add(conn)
        if self.emu._stopping.is_set():
            # Accepted just as stop() swept the connections: drop it like the others.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self.emu._lock:
            self.emu._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    @property
    def emu(self) -> Emulator:
        return self.server.emulator

    def log_message(self, format: str, *args: Any) -> None:
        if self.emu.verbose:
            # Paths and statuses only: bodies (assertions, tokens) are never logged.
            sys.stderr.write(f"emulator: {self.address_string()} {format % args}\n")

    # ------------------------------------------------------------- plumbing
    def _lower_headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Token clients send Content-Length; a chunked body would desync keep-alive.
            raise ValueError("chunked request bodies are not supported")
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        n = int(length)
        if n < 0 or n > MAX_BODY:
            raise ValueError(f"Content-Length must be between 0 and {MAX_BODY}")
        return self.rfile.read(n)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        # Recorded before the client can see the answer, so tests never race the record.
        self._record_pending(status)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _send_error(self, err: errors.EntraError) -> None:
        self._send(err.status, err.encode(), headers=err.headers)

    def _record_pending(self, status: int) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        method, headers, form = pending
        peer = (str(self.client_address[0]), int(self.client_address[1]))
        self.emu._record(
            RecordedRequest(time.time(), self.path, method, headers, form, status, peer)
        )

    # ------------------------------------------------------------- routing
    def do_GET(self) -> None:
        self._pending = ("GET", self._lower_headers(), {})
        path = urlsplit(self.path).path.rstrip("/") or "/"
        emu = self.emu
        parts = path.strip("/").split("/")
        if path == "/.well-known/openid-configuration":
            self._send_json(200, emu.cluster_discovery())
        elif path == "/openid/v1/jwks":
            self._send(200, json.dumps(emu.cluster_jwks()).encode(), "application/jwk-set+json")
        elif path == "/common/discovery/instance":
            self._send_json(200, emu.instance_discovery())
        elif len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            if emu._known_tenant(parts[0]):
                self._send_json(200, emu.tenant_discovery())
            else:
                self._send_error(errors.tenant_not_found(parts[0]))
        elif len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"]:
            if emu._known_tenant(parts[0]):
                self._send_json(200, emu.entra_jwks())
            else:
                self._send_error(errors.tenant_not_found(parts[0]))
        elif path == "/_admin/status":
            self._admin(lambda _body: self._admin_status(), b"")
        else:
            self._send_json(404, {"error": "not_found", "path": path})

    def do_POST(self) -> None:
        self._pending = ("POST", self._lower_headers(), {})
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._send_json(400, {"error": "invalid_request", "error_description": str(exc)})
            return
        path = urlsplit(self.path).path
        if path.startswith("/_admin/"):
            self._admin(lambda b: self._admin_post(path, b), body)
            return
        tenant = _token_tenant(self.path)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        self._pending = ("POST", self._lower_headers(), form)
        if tenant is None:
            self._send_json(404, {"error": "not_found", "path": path})
            return
        self._token(tenant, form)

    def _token(self, tenant: str, form: dict[str, str]) -> None:
        emu = self.emu
        fault = emu._next_fault()
        if fault is not None:
            if fault.kind == "reset":
                self._record_pending(0)
                self._reset()
                return
            if fault.kind == "hang":
                self._record_pending(0)
                emu._stopping.wait(fault.delay if fault.delay > 0 else None)
                self.close_connection = True
                return
            if fault.kind == "delay":
                emu._stopping.wait(fault.delay)
            else:
                self._answer_fault(fault)
                return
        try:
            status, body = emu.handle_token_request(tenant, form)
        except errors.EntraError as err:
            self._send_error(err)
            return
        self._send_json(status, body)

    def _answer_fault(self, fault: Fault) -> None:
        if fault.kind == "status":
            err = errors.for_status(
                fault.status or 500,
                error=fault.error,
                aadsts=fault.aadsts,
                retry_after=fault.retry_after,
            )
            self._send_error(err)
            return
        extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        if fault.kind == "html":
            status = fault.status or 502
            page = (
                b"<!DOCTYPE html><html><head><title>Service unavailable</title></head>"
                b"<body><h1>Our services aren't available right now</h1>"
                b"<p>We're working to restore all services as soon as possible.</p></body></html>"
            )
            self._send(status, page, "text/html; charset=utf-8", extra)
            return
        status = fault.status or 200
        if fault.kind == "non_json":
            self._send(status, b'{"token_type":"Bearer","expires_in":', headers=extra)
            return
        lifetime = max(int(self.emu.access_token_lifetime), 1)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
        }
        if fault.kind == "no_expires_in":
            body = {"token_type": "Bearer", "access_token": _fake_token()}
        self._send_json(status, body, extra)

    def _reset(self) -> None:
        conn = self.connection
        with contextlib.suppress(OSError):
            # SO_LINGER with a zero timeout turns close() into an RST.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with self.emu._lock:
            self.emu._connections.discard(conn)
        with contextlib.suppress(OSError):
            # Close the descriptor now: socket.close() would wait for rfile/wfile to close,
            # and an SSLSocket would first try to send close_notify.
            os.close(conn.detach())

    # ------------------------------------------------------------- admin
    def _admin(self, action: Callable[[bytes], dict[str, Any] | None], body: bytes) -> None:
        if not is_loopback_peer(str(self.client_address[0])):
            self._send_json(
                403, {"error": "forbidden", "detail": "admin requests only from loopback"}
            )
            return
        try:
            result = action(body)
        except (ValueError, TypeError, KeyError) as exc:
            self._send_json(400, {"error": "invalid_request", "detail": str(exc)})
            return
        if result is None:
            self._send_json(404, {"error": "not_found"})
            return
        self._send_json(200, result)

    def _admin_status(self) -> dict[str, Any]:
        emu = self.emu
        reqs = emu.token_requests()
        return {
            "token_requests": len(reqs),
            "statuses": [r.status for r in reqs[-50:]],
            "pending_faults": emu.pending_faults(),
            "access_token_lifetime": emu.access_token_lifetime,
        }

    def _admin_post(self, path: str, body: bytes) -> dict[str, Any] | None:
        emu = self.emu
        data: Any = json.loads(body) if body.strip() else {}
        if path == "/_admin/faults":
            items = data.get("faults", [data]) if isinstance(data, dict) else data
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError('expected a fault object, a list of them, or {"faults": [...]}')
            faults = [Fault.from_dict(i) for i in items]
            emu.inject(*faults)
            return {"queued": len(faults), "pending_faults": emu.pending_faults()}
        if path == "/_admin/clear-faults":
            emu.clear_faults()
            return {"pending_faults": 0}
        if path == "/_admin/expire-assertion":
            emu.reject_current_assertion_as_expired()
            return {"rejected": "current assertion"}
        if path == "/_admin/rotate":
            ttl = data.get("ttl") if isinstance(data, dict) else None
            expired = bool(data.get("expired", False)) if isinstance(data, dict) else False
            emu.rotate(None if ttl is None else float(ttl), expired=expired)
            # The new assertion itself is a secret: say that it rotated, not what it is.
            return {"rotated": True}
        if path == "/_admin/lifetime":
            if not isinstance(data, dict) or "seconds" not in data:
                raise ValueError('expected {"seconds": N}')
            seconds = float(data["seconds"])
            if seconds < 1:
                raise ValueError("lifetime must be at least 1 second")
            emu.access_token_lifetime = seconds
            return {"access_token_lifetime": seconds}
        return None


def _fake_token() -> str:
    # An unsigned, obviously fake token for malformed-answer faults; never a real one.
    return "emulator-fault." + b64url(secrets.token_bytes(12))
