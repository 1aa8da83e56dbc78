"""The AKS identity-binding token proxy, emulated: its own TLS listener, CA and SNI name.

What a pod with ``azure.workload.identity/use-identity-binding: "true"`` sees (AKS
identity-bindings docs; azure-identity 1.27 ``_internal/token_binding_transport_*``):
``AZURE_KUBERNETES_TOKEN_PROXY`` (an https URL, typically an IP), ``AZURE_KUBERNETES_SNI_NAME``
(the name to send as TLS server name *and* to verify the certificate against) and
``AZURE_KUBERNETES_CA_FILE`` (a CA bundle kubelet updates like any projected file). The SDK
sends the usual token request to ``<proxy URL path>/<tenant>/oauth2/v2.0/token`` (query kept);
the projected token's audience is ``api://AKSIdentityBinding``.

Emulated behaviour:

* TLS with a CA of its own; the server certificate names only the SNI name (no IP SAN), so a
  client verifying against the proxy's address fails, as it should.
* ``POST <base>/<tenant>/oauth2/v2.0/token``: a Kubernetes RBAC-like check (may this service
  account use this client id? ``deny()``), then the request goes to the emulated Entra with
  the in-process ``via_identity_binding`` mark and Entra's answer passes through unchanged.
* The proxy's own failures answer ``text/plain`` (a non-Entra body): 400 for a request it
  cannot route, 401 for an undecodable service-account token, 403 when RBAC denies (worded
  like Kubernetes' RBAC denial of verb ``use-managed-identity`` in group
  ``cid.wi.aks.azure.com``), 404 for other paths. The real proxy's own bodies are not
  publicly documented; these are the emulator's.
* ``rotate_ca()`` switches to a new CA at once and publishes the bundle with kubelet's write
  sequence; ``publish_ca_bundle(b"")`` produces the empty-file moment a reader must survive.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from entra_tokend.emulator import errors, faults
from entra_tokend.emulator._crypto import decode_jwt, private_pem, write_private, write_public
from entra_tokend.emulator.faults import FaultQueue
from entra_tokend.emulator.http import HttpServer
from entra_tokend.emulator.kubelet import ProjectedVolume
from entra_tokend.emulator.pki import issue_leaf, make_ca, pem
from entra_tokend.emulator.recorder import RecordedRequest, Recorder
from entra_tokend.emulator.tenant import Tenant
from entra_tokend.emulator.wire import Endpoint, Outcome, Request, Response

# Both the emulator's choice: a name that is not the listener's address, and a non-empty base
# path so a client's path joining (azure-identity: proxy path + "/" + request path) is tested.
DEFAULT_SNI_NAME = "ib.aks.local"
DEFAULT_BASE_PATH = "/identitybinding"
CA_FILENAME = "ca.crt"  # the webhook mounts the CA as ca-cert/ca.crt


class IdentityBindingProxy:
    """The proxy: a TLS listener on ``host`` answering for ``sni_name`` under ``base_path``.

    ``tenant`` handles forwarded requests; ``fault_queue`` and ``recorder`` are shared with
    the rest of the emulator (faults targeting ``proxy`` apply here first, then ``token``).
    """

    def __init__(
        self,
        directory: Path,
        tenant: Tenant,
        fault_queue: FaultQueue,
        recorder: Recorder,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sni_name: str = DEFAULT_SNI_NAME,
        base_path: str = DEFAULT_BASE_PATH,
        verbose: bool = False,
    ) -> None:
        self.directory = directory
        self.tenant = tenant
        self.faults = fault_queue
        self.recorder = recorder
        self.host = host
        self.sni_name = sni_name
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.volume = ProjectedVolume(directory / "ca", filename=CA_FILENAME)
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._generation = 0
        self._ca_pems: list[bytes] = []
        self._denied: set[tuple[str | None, str | None]] = set()
        self._http = HttpServer(
            host, port, self, context=self.context, verbose=verbose, name="entra-emulator-ibproxy"
        )

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Create the first CA and certificate, publish the bundle, and listen."""
        self.rotate_ca()
        self._http.start()

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        self._http.stop()

    def context(self) -> ssl.SSLContext | None:
        """The TLS context for new connections (the current certificate)."""
        with self._lock:
            return self._context

    @property
    def port(self) -> int:
        """The bound port."""
        return self._http.port

    @property
    def url(self) -> str:
        """``AZURE_KUBERNETES_TOKEN_PROXY``: https, the listener's address, the base path."""
        # A wildcard bind is reached on loopback; clients need an address, not "any".
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{self.port}{self.base_path}"

    @property
    def ca_file(self) -> Path:
        """``AZURE_KUBERNETES_CA_FILE``: the user-visible bundle path (a symlink into ..data)."""
        return self.volume.path

    # ----------------------------------------------------------------- CA rotation
    def rotate_ca(self, *, keep_previous: bool = False) -> None:
        """A new CA and server certificate, used for new connections at once; the bundle is
        republished with kubelet's sequence (new CA first, plus the previous one when
        ``keep_previous``, as an overlapping rotation would)."""
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = make_ca(ca_key, f"identity-binding proxy CA {self._generation + 1}")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_leaf(ca_key, ca_cert, key, dns_names=[self.sni_name])
        with self._lock:
            self._generation += 1
            gen = self._generation
            previous = self._ca_pems[-1:] if keep_previous else []
            self._ca_pems = [*previous, pem(ca_cert)]
            bundle = b"".join(reversed(self._ca_pems))
        cert_path = self.directory / f"server-{gen}.pem"
        key_path = self.directory / f"server-{gen}-key.pem"
        write_public(cert_path, pem(cert))
        write_private(key_path, private_pem(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        self.publish_ca_bundle(bundle)
        with self._lock:
            self._context = context

    def publish_ca_bundle(self, data: bytes) -> None:
        """Write ``data`` as the CA bundle the way kubelet updates a projected file."""
        self.volume.write(data)

    # ----------------------------------------------------------------- RBAC
    def deny(self, client_id: str | None = None, subject: str | None = None) -> None:
        """Forbid ``subject`` (None: every service account) to use ``client_id`` (None: any)."""
        with self._lock:
            self._denied.add((client_id, subject))

    def allow_all(self) -> None:
        """Drop every ``deny`` rule."""
        with self._lock:
            self._denied.clear()

    def _denied_for(self, client_id: str, subject: str) -> bool:
        with self._lock:
            return any(
                (c is None or c == client_id) and (s is None or s == subject)
                for c, s in self._denied
            )

    # ----------------------------------------------------------------- wire.Service
    def token_tenant(self, path: str) -> str | None:
        """The tenant of ``<base>/<tenant>/oauth2/v2.0/token``, else None."""
        if self.base_path and not path.startswith(self.base_path + "/"):
            return None
        parts = path[len(self.base_path) :].strip("/").split("/")
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"] and parts[0]:
            return parts[0]
        return None

    def serve(self, request: Request) -> tuple[Endpoint, Outcome]:
        """Answer a request to the proxy listener (faults first)."""
        tenant = self.token_tenant(request.path) if request.method == "POST" else None
        if tenant is None:
            return Endpoint.PROXY_OTHER, Response.text(404, f"no route for {request.path}")
        fault = self.faults.take(("proxy", "token"))
        if fault is not None:
            lifetime = max(int(self.tenant.access_token_lifetime), 1)
            return Endpoint.PROXY_TOKEN, faults.apply(
                fault, lambda: self.forward(tenant, request), lifetime
            )
        return Endpoint.PROXY_TOKEN, self.forward(tenant, request)

    def forward(self, tenant: str, request: Request) -> Response:
        """The proxy's checks, then Entra's answer (passed through) or the proxy's own."""
        form = request.form()
        client_id = form.get("client_id")
        assertion = form.get("client_assertion")
        if not client_id or not assertion:
            return Response.text(
                400, "identity-binding proxy: client_id and client_assertion required"
            )
        try:
            _header, claims = decode_jwt(assertion)
        except ValueError:
            return Response.text(401, "identity-binding proxy: service account token rejected")
        subject = str(claims.get("sub", ""))
        if self._denied_for(client_id, subject):
            return Response.text(403, _rbac_denial(subject, client_id))
        try:
            body = self.tenant.handle_token_request(tenant, form, via_identity_binding=True)
        except errors.EntraError as err:
            return Response(err.status, err.encode(), headers=err.headers)
        return Response.json(200, body)

    def record(self, request: Request, endpoint: Endpoint, status: int) -> None:
        """Record the request as received by the proxy, with its SNI."""
        self.recorder.record(
            RecordedRequest(
                time=time.time(),
                path=request.target,
                method=request.method,
                headers=dict(request.headers),
                form=request.form() if request.method == "POST" else {},
                status=status,
                peer=request.peer,
                endpoint=endpoint,
                server_name=request.server_name,
                query=request.query_dict(),
            )
        )

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for status output."""
        return {"url": self.url, "sni_name": self.sni_name, "ca_file": str(self.ca_file)}


def _rbac_denial(subject: str, client_id: str) -> str:
    return (
        f'identity-binding proxy: forbidden: User "{subject}" cannot use-managed-identity '
        f'resource "{client_id}" in API group "cid.wi.aks.azure.com" at the cluster scope'
    )
