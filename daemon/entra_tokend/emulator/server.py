"""``Emulator``: the facade tests, benchmarks and ``entra-tokend dev`` drive.

It wires the roles, each in its own module, and keeps one public API:

* ``issuer.ClusterIssuer``: the Kubernetes service-account issuer and kubelet's rotation;
* ``tenant.Tenant``: the Entra tenant (apps, federated credentials, token validation);
* ``registry.RegistryTokenService``: Azure Container Registry's token service;
* ``proxy.IdentityBindingProxy``: the AKS identity-binding token proxy (opt-in);
* ``faults.FaultQueue`` and ``recorder.Recorder``: resilience tests' levers and eyes;
* ``http.HttpServer`` + ``routes.MainRoutes`` (+ ``admin.AdminApi``): the wire.

Nothing here imports the daemon: the emulator stays an independent check of it.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from entra_tokend.emulator._crypto import SigningKey, load_or_create_key
from entra_tokend.emulator.admin import is_loopback_peer
from entra_tokend.emulator.facades import BindingFacade, EnvironmentFacade, RegistryFacade
from entra_tokend.emulator.faults import Fault, FaultKind, FaultQueue, FaultTarget
from entra_tokend.emulator.http import HttpServer
from entra_tokend.emulator.issuer import (
    IDENTITY_BINDING_AUDIENCE,
    TOKEN_EXCHANGE_AUDIENCE,
    ClusterIssuer,
    Rotator,
)
from entra_tokend.emulator.kubelet import ProjectedVolume
from entra_tokend.emulator.pki import TlsFiles, make_tls
from entra_tokend.emulator.proxy import DEFAULT_BASE_PATH, DEFAULT_SNI_NAME
from entra_tokend.emulator.recorder import RecordedRequest, Recorder
from entra_tokend.emulator.registry import RegistrySetup
from entra_tokend.emulator.routes import MainRoutes
from entra_tokend.emulator.tenant import App, FederatedCredential, Tenant, credential

__all__ = [
    "App",
    "Emulator",
    "Fault",
    "FaultKind",
    "FaultTarget",
    "FederatedCredential",
    "RecordedRequest",
    "RegistrySetup",
    "is_loopback_peer",
]


class Emulator(RegistryFacade, BindingFacade, EnvironmentFacade):
    """A local Entra tenant, Kubernetes service-account issuer, ACR token service and
    (with ``identity_binding``) AKS token proxy. Times are seconds; see the module docstring.

    Raises ``ValueError`` for a non-positive ``token_ttl`` or ``rotate_every``.
    """

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
        identity_binding: bool = False,
        sni_name: str = DEFAULT_SNI_NAME,
        proxy_base_path: str = DEFAULT_BASE_PATH,
        acr_refresh_token_lifetime: float = 10800.0,
        acr_access_token_lifetime: float = 4500.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        if rotate_every is not None and rotate_every <= 0:
            raise ValueError("rotate_every must be positive")
        self.state_dir = Path(state_dir).absolute()
        self.host = host
        self.port = port
        self.tls = tls
        self.rotate_every = rotate_every
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.client_id = client_id or str(uuid.uuid4())
        self.verbose = verbose
        self.volume = ProjectedVolume(self.state_dir / "serviceaccount")
        self.faults = FaultQueue()
        # "Now" for every token issued or checked and every request recorded (unix seconds):
        # tests that simulate hours pass a clock they advance.
        self.clock = clock
        self.recorder = Recorder(clock)
        self.cluster = ClusterIssuer(
            self.state_dir / "keys",
            self.volume,
            lambda: self.authority_host,
            namespace=namespace,
            service_account=service_account,
            token_ttl=float(token_ttl),
            clock=clock,
            audiences=[IDENTITY_BINDING_AUDIENCE if identity_binding else TOKEN_EXCHANGE_AUDIENCE],
        )
        self.tenant = Tenant(
            self.tenant_id,
            authority_host=lambda: self.authority_host,
            cluster_issuer=lambda: self.issuer,
            assertion_key=lambda: self.cluster.key,
            access_token_lifetime=access_token_lifetime,
            clock=clock,
        )
        self.registries = self._make_registries(
            acr_refresh_token_lifetime, acr_access_token_lifetime
        )
        self.proxy = self._make_proxy(
            identity_binding, host=host, sni_name=sni_name, base_path=proxy_base_path
        )
        self._http: HttpServer | None = None
        self._rotator: Rotator | None = None
        self._tls_files: TlsFiles | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Emulator:
        """Bind, write the first projected token, and serve from background threads."""
        if self._http is not None:
            raise RuntimeError("emulator already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cluster.load_keys()
        self.tenant.load_keys(
            SigningKey(load_or_create_key(self.state_dir / "keys" / "entra.pem", "entra"))
        )
        context: ssl.SSLContext | None = None
        if self.tls:
            self._tls_files = make_tls(self.state_dir / "tls")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self._tls_files.server_cert, self._tls_files.server_key)
        http = HttpServer(
            self.host, self.port, MainRoutes(self), context=lambda: context, verbose=self.verbose
        )
        http.start()
        self._http = http
        self.port = http.port
        try:
            if not self.tenant.has_app(self.client_id):
                self.add_app(self.client_id)
            if self.proxy is not None:
                self.proxy.start()
            self.rotate()
        except BaseException:
            self.stop()  # no listener left running behind a failed start
            raise
        if self.rotate_every is not None:
            self._rotator = Rotator(self.rotate, self.rotate_every)
            self._rotator.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop every open connection, and join the background threads."""
        if self._http is None:
            return
        self._http.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self._rotator is not None:
            self._rotator.stop()
            self._rotator = None
        self._http = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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
        return self.cluster.subject

    @property
    def namespace(self) -> str:
        """The service account's namespace."""
        return self.cluster.namespace

    @property
    def service_account(self) -> str:
        """The service account's name."""
        return self.cluster.service_account

    @property
    def token_ttl(self) -> float:
        """Lifetime of each projected token (seconds)."""
        return self.cluster.token_ttl

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
        """Sign a projected service-account token without writing it (``ClusterIssuer.issue``).

        ``untrusted_key`` signs with a key absent from the cluster's JWKS.
        """
        return self.cluster.issue(
            ttl,
            issuer=issuer,
            subject=subject,
            audience=audience,
            expired=expired,
            not_before=not_before,
            untrusted_key=untrusted_key,
        )

    def rotate(self, ttl: float | None = None, *, expired: bool = False) -> str:
        """Issue a new projected token and publish it with kubelet's write sequence."""
        return self.cluster.rotate(ttl, expired=expired)

    def cluster_discovery(self) -> dict[str, Any]:
        """The cluster issuer's OIDC discovery document (as kube-apiserver serves it)."""
        return self.cluster.discovery()

    def cluster_jwks(self) -> dict[str, Any]:
        """The JWKS that verifies projected tokens."""
        return self.cluster.jwks()

    # ----------------------------------------------------------------- tenant
    @property
    def access_token_lifetime(self) -> float:
        """``expires_in`` of issued access tokens (seconds; settable)."""
        return self.tenant.access_token_lifetime

    @access_token_lifetime.setter
    def access_token_lifetime(self, seconds: float) -> None:
        self.tenant.access_token_lifetime = float(seconds)

    def add_app(
        self,
        client_id: str,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        audience: str | None = None,
        federated: bool = True,
        identity_binding: bool | None = None,
    ) -> App:
        """Register an app with one federated credential (defaults: this cluster's SA).

        ``federated=False`` registers the app with no federated credential at all. In
        identity-binding mode (or with ``identity_binding=True``) the app also gets a binding
        credential, matched only through the proxy. Default issuers resolve at request time.
        """
        sub = subject if subject is not None else self.subject
        creds = [credential(issuer=issuer, subject=sub, audience=audience)] if federated else []
        binding = self.proxy is not None if identity_binding is None else identity_binding
        if federated and binding:
            creds.append(
                credential(issuer=issuer, subject=sub, audience=None, identity_binding=True)
            )
        return self.tenant.add_app(client_id, creds)

    def add_federated_credential(
        self,
        client_id: str,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        audience: str | None = None,
        identity_binding: bool = False,
    ) -> None:
        """Add another federated credential to a registered app (``KeyError`` if unknown)."""
        sub = subject if subject is not None else self.subject
        self.tenant.add_credential(
            client_id,
            credential(
                issuer=issuer, subject=sub, audience=audience, identity_binding=identity_binding
            ),
        )

    def remove_app(self, client_id: str) -> None:
        """Delete an app registration (its requests then earn AADSTS700016)."""
        self.tenant.remove_app(client_id)

    def reject_current_assertion_as_expired(self) -> None:
        """Answer AADSTS700024 to requests carrying the projected token now on disk."""
        self.tenant.reject_assertion(self.token_file.read_text().strip())

    def handle_token_request(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Validate a direct token request like Entra; return (200, JSON body).

        Raises ``errors.EntraError`` for every rejection.
        """
        return 200, self.tenant.handle_token_request(tenant, form)

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far."""
        return self.tenant.issued_tokens

    def entra_jwks(self) -> dict[str, Any]:
        """The JWKS that verifies issued access tokens."""
        return self.tenant.jwks()

    def tenant_discovery(self) -> dict[str, Any]:
        """``/{tenant}/v2.0/.well-known/openid-configuration``."""
        return self.tenant.discovery()

    def instance_discovery(self) -> dict[str, Any]:
        """``/common/discovery/instance`` as MSAL's instance discovery expects it."""
        return self.tenant.instance_discovery()

    # ----------------------------------------------------------------- faults and records
    def inject(self, *faults: Fault) -> None:
        """Queue faults (FIFO per target); each applies to its next ``count`` requests."""
        self.faults.inject(*faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self.faults.clear()

    def pending_faults(self) -> int:
        """How many requests the queued faults will still affect."""
        return self.faults.pending()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, on every listener (a snapshot)."""
        return self.recorder.all()

    def token_requests(self) -> list[RecordedRequest]:
        """The POSTs to a token endpoint so far, direct or through the proxy."""
        return self.recorder.token_requests()

    def wait_for_requests(self, n: int, timeout: float) -> list[RecordedRequest]:
        """Block until at least ``n`` token requests arrived; raise TimeoutError otherwise."""
        return self.recorder.wait_for_token_requests(n, timeout)
