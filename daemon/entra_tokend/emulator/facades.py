"""The ``Emulator``'s container-registry, identity-binding and environment methods (mixins).

Kept apart from ``server.py`` so the facade stays readable; each method delegates to a role
object (``registry.RegistryTokenService``, ``proxy.IdentityBindingProxy``). The attributes
and properties declared on each mixin are the ones ``Emulator`` provides.
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from entra_tokend.emulator.faults import FaultQueue
from entra_tokend.emulator.pki import ensure_ca, issue_server_files
from entra_tokend.emulator.proxy import IdentityBindingProxy
from entra_tokend.emulator.recorder import RecordedRequest, Recorder
from entra_tokend.emulator.registry import (
    ACR_ISSUER,
    ACR_RESOURCE,
    RegistrySetup,
    RegistryTokenService,
)
from entra_tokend.emulator.tenant import Tenant
from entra_tokend.emulator.wire import Endpoint


class RegistryFacade:
    """Azure Container Registry token service methods of ``Emulator``."""

    registries: RegistryTokenService
    recorder: Recorder
    clock: Callable[[], float]
    state_dir: Path
    tenant: Tenant

    @property
    def authority_host(self) -> str:
        """Base URL of the emulator (defined by ``Emulator``)."""
        raise NotImplementedError

    def _make_registries(
        self, refresh_lifetime: float, access_lifetime: float
    ) -> RegistryTokenService:
        return RegistryTokenService(
            self.state_dir / "acr",
            verify_entra=lambda t: self.tenant.verify_access_token(t, audience=ACR_RESOURCE),
            refresh_token_lifetime=refresh_lifetime,
            access_token_lifetime=access_lifetime,
            clock=self.clock,
        )

    @property
    def registry_realm(self) -> str:
        """The token realm registries point at: ``<authority_host>/oauth2/token``."""
        return f"{self.authority_host}/oauth2/token"

    @property
    def acr_exchange_url(self) -> str:
        """Where ACR's ``POST /oauth2/exchange`` is served for every registry."""
        return f"{self.authority_host}/oauth2/exchange"

    @property
    def acr_refresh_token_lifetime(self) -> float:
        """Lifetime of issued ACR refresh tokens (seconds; settable)."""
        return self.registries.refresh_token_lifetime

    @acr_refresh_token_lifetime.setter
    def acr_refresh_token_lifetime(self, seconds: float) -> None:
        self.registries.refresh_token_lifetime = float(seconds)

    def add_registry(
        self, name: str, *, actions: Iterable[str] = ("pull", "push")
    ) -> RegistrySetup:
        """Serve registry ``name`` (``host:port`` as clients write it) and return what a real
        ``docker-registry`` needs: realm, issuer, rootcertbundle and a TLS certificate for
        ``host`` signed by the emulator's CA. Every app of the tenant holds ``actions``."""
        self.registries.add(name, actions)
        host = urlsplit(f"//{name}").hostname or name
        tls = issue_server_files(
            self.state_dir / "tls",
            self.state_dir / "registries" / name.replace(":", "_").replace("/", "_"),
            dns_names=["localhost"] if _is_ip(host) or host == "localhost" else [host, "localhost"],
            ips=sorted({host, "127.0.0.1"}) if _is_ip(host) else ["127.0.0.1"],
        )
        return RegistrySetup(
            service=name,
            realm=self.registry_realm,
            exchange_url=self.acr_exchange_url,
            issuer=ACR_ISSUER,
            rootcertbundle=self.registries.rootcertbundle,
            ca_file=ensure_ca(self.state_dir / "tls")[2],
            tls_cert=tls.server_cert,
            tls_key=tls.server_key,
        )

    def grant_registry_access(
        self, name: str, client_id: str, actions: Sequence[str] | None
    ) -> None:
        """Set ``client_id``'s actions in registry ``name`` (``"*"``: every client); None
        removes the role assignment, so its exchange answers 403 DENIED."""
        self.registries.grant(name, client_id, actions)

    def revoke_acr_refresh_tokens(self, name: str) -> None:
        """Make registry ``name`` reject every ACR refresh token issued so far."""
        self.registries.revoke_refresh_tokens(name)

    @property
    def issued_acr_refresh_tokens(self) -> list[str]:
        """Every ACR refresh token handed out so far."""
        return self.registries.issued_refresh_tokens

    @property
    def issued_registry_tokens(self) -> list[str]:
        """Every registry access token handed out so far."""
        return self.registries.issued_access_tokens

    def acr_requests(self) -> list[RecordedRequest]:
        """Requests to ``/oauth2/exchange``, ``/oauth2/token`` and ``/v2/`` so far."""
        return self.recorder.matching(Endpoint.ACR_EXCHANGE, Endpoint.ACR_TOKEN, Endpoint.REGISTRY)

    def new_correlation_id(self) -> str:
        """A fresh correlation id for an ACR answer."""
        return str(uuid.uuid4())


class BindingFacade:
    """Identity-binding proxy methods of ``Emulator``."""

    proxy: IdentityBindingProxy | None
    recorder: Recorder
    state_dir: Path
    faults: FaultQueue
    tenant: Tenant
    verbose: bool

    def _make_proxy(
        self, enabled: bool, *, host: str, sni_name: str, base_path: str
    ) -> IdentityBindingProxy | None:
        if not enabled:
            return None
        return IdentityBindingProxy(
            self.state_dir / "identity-binding",
            self.tenant,
            self.faults,
            self.recorder,
            host=host,
            sni_name=sni_name,
            base_path=base_path,
            verbose=self.verbose,
        )

    @property
    def token_proxy_url(self) -> str:
        """``AZURE_KUBERNETES_TOKEN_PROXY``; ``RuntimeError`` outside identity-binding mode."""
        return self._require_proxy().url

    def rotate_proxy_ca(self, *, keep_previous: bool = False) -> None:
        """Rotate the proxy's CA now and republish its bundle (``RuntimeError`` without one)."""
        self._require_proxy().rotate_ca(keep_previous=keep_previous)

    def proxy_requests(self) -> list[RecordedRequest]:
        """Requests received by the identity-binding proxy so far (token requests and
        anything else sent to it)."""
        return [r for r in self.recorder.all() if r.via_proxy]

    def _require_proxy(self) -> IdentityBindingProxy:
        if self.proxy is None:
            raise RuntimeError("the emulator runs without identity-binding mode")
        return self.proxy


class EnvironmentFacade:
    """The environment a pod would get, as a dict or a shell-sourceable file."""

    tenant_id: str
    client_id: str
    proxy: IdentityBindingProxy | None

    @property
    def authority_host(self) -> str:
        """Base URL of the emulator (defined by ``Emulator``)."""
        raise NotImplementedError

    @property
    def token_file(self) -> Path:
        """The projected token path (defined by ``Emulator``)."""
        raise NotImplementedError

    @property
    def ca_file(self) -> Path | None:
        """The emulator's CA (defined by ``Emulator``)."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The environment a workload-identity pod would get, pointing at this emulator
        (plus the three ``AZURE_KUBERNETES_*`` variables in identity-binding mode)."""
        env = {
            "AZURE_TENANT_ID": self.tenant_id,
            "AZURE_CLIENT_ID": self.client_id,
            "AZURE_FEDERATED_TOKEN_FILE": str(self.token_file),
            "AZURE_AUTHORITY_HOST": self.authority_host,
        }
        if self.ca_file is not None:
            env["SSL_CERT_FILE"] = str(self.ca_file)
            env["REQUESTS_CA_BUNDLE"] = str(self.ca_file)
            # node ignores SSL_CERT_FILE; @azure/identity and msal-node trust this one.
            env["NODE_EXTRA_CA_CERTS"] = str(self.ca_file)
        if self.proxy is not None:
            env["AZURE_KUBERNETES_TOKEN_PROXY"] = self.proxy.url
            env["AZURE_KUBERNETES_SNI_NAME"] = self.proxy.sni_name
            env["AZURE_KUBERNETES_CA_FILE"] = str(self.proxy.ca_file)
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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
