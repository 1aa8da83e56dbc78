"""TLS to an AKS identity-binding token proxy: the SNI name, and a CA bundle that rotates.

A pod annotated ``azure.workload.identity/use-identity-binding: "true"`` sends its token
request to the cluster's token proxy instead of Entra. The facts below are azure-identity
1.27's (files under ``azure/identity/``), which azidentity (Go), Azure.Identity (.NET) and the
Java SDK follow:

- ``_internal/token_binding_transport_requests.py`` ``SNIAdapter``: the TLS context is
  ``ssl.create_default_context(cadata=ca_data)`` — the proxy's CA *only* when one is given, the
  default trust store when none is — and ``server_hostname`` is ``AZURE_KUBERNETES_SNI_NAME``,
  which urllib3 sends as the TLS server name *and* matches the certificate against (the
  proxy's URL is typically an IP address its certificate does not name).
- ``_internal/token_binding_transport_mixin.py`` ``_load_ca_file_to_data`` and
  ``_has_ca_file_changed``: the CA file is read at start (empty or unreadable: an error), then
  before each request re-read when it changed; a file that is empty or unreadable then keeps
  the previous CA (kubelet's projected-volume update has such moments), and a good new bundle
  is used from that request on.

Here: ``sni_context`` builds a client context whose every connection uses the SNI name as
server name, so it holds through an ``HTTPS_PROXY`` CONNECT tunnel too (httpcore's
``sni_hostname`` request extension does not reach a tunnelled TLS handshake). ``ProxyTrust``
holds one identity's CA and re-checks the file's stat signature (device, inode, size, mtime)
before each request: one ``stat`` call when nothing changed.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

from entra_tokend.logging import get_logger
from entra_tokend.util.files import read_regular
from entra_tokend.util.pem import pem_problem


class TrustUnavailable(Exception):
    """No usable CA for the token proxy and no previous one to keep (a fixed message naming the
    file, never its content)."""


class _SNIContext(ssl.SSLContext):
    """A client context that presents and verifies ``sni_name`` whatever host it dials."""

    sni_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """As ``SSLContext.wrap_bio``, with ``sni_name`` as the server name when set."""
        return super().wrap_bio(
            incoming, outgoing, server_side, self.sni_name or server_hostname, session
        )

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """As ``SSLContext.wrap_socket``, with ``sni_name`` as the server name when set."""
        if self.sni_name:
            kwargs["server_hostname"] = self.sni_name
        return super().wrap_socket(sock, *args, **kwargs)


def sni_context(
    sni_name: str | None, ca_data: str | None, default_cafile: str | None = None
) -> ssl.SSLContext:
    """A verifying TLS client context for the token proxy.

    Trusts only ``ca_data`` (PEM) when given, else ``default_cafile`` (a bundle path) or
    OpenSSL's default store; checks the certificate against ``sni_name`` (and sends it as the
    TLS server name) when given, else against the URL's host. Raises ``ssl.SSLError`` or
    ``ValueError`` for CA data OpenSSL cannot load.
    """
    context = _SNIContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname
    context.sni_name = sni_name
    if ca_data is not None:
        context.load_verify_locations(cadata=ca_data)
    elif default_cafile is not None:
        context.load_verify_locations(cafile=default_cafile)
    else:
        context.load_default_certs()
    return context


class ProxyTrust:
    """The token proxy's current TLS trust for one identity's settings.

    ``ca_file`` is re-read when its stat signature changes (``refresh``); ``ca_data`` and the
    default store never change. ``fingerprint`` (SHA-256 of the CA text, or ``"default"``)
    names the current trust, so the client pool can tell a real rotation from a rewrite of
    the same bundle.
    """

    def __init__(
        self,
        sni_name: str | None,
        ca_file: Path | None,
        ca_data: str | None,
        default_cafile: str | None = None,
    ) -> None:
        self.sni_name = sni_name
        self.ca_file = ca_file
        self._default_cafile = default_cafile
        self._signature: tuple[int, int, int, int] | None = None
        self._complaint: str | None = None  # the last problem logged (logged once)
        self.context: ssl.SSLContext | None = None
        self.fingerprint = "default"
        if ca_file is None:
            self.context = sni_context(sni_name, ca_data, default_cafile)
            if ca_data is not None:
                self.fingerprint = hashlib.sha256(ca_data.encode()).hexdigest()

    def current(self) -> ssl.SSLContext:
        """The context to use for the next request, after re-reading a changed CA file.

        Raises ``TrustUnavailable`` when the CA file has never been usable.
        """
        if self.ca_file is not None:
            self._refresh(self.ca_file)
        if self.context is None:
            raise TrustUnavailable(
                f"the token proxy CA file {self.ca_file} has not held a usable CA bundle yet"
            )
        return self.context

    def _refresh(self, path: Path) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            self._complain(path, f"cannot be examined: {exc.strerror}")
            return
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return
        try:
            # Non-blocking and bounded: a FIFO swapped in must not freeze the event loop.
            data = read_regular(path, 1024 * 1024)[: 1024 * 1024]
            text = data.decode("utf-8", errors="replace")
        except OSError as exc:
            self._complain(path, f"cannot be read: {exc.strerror or exc}")
            return
        why = pem_problem(text)
        if why is not None:
            # Not remembered as seen: kubelet's next write changes the signature anyway, and
            # an empty file may be filled in place by other writers.
            self._complain(path, why)
            return
        self._signature = signature
        fingerprint = hashlib.sha256(text.encode()).hexdigest()
        if fingerprint != self.fingerprint or self.context is None:
            first = self.context is None
            self.context = sni_context(self.sni_name, text, self._default_cafile)
            self.fingerprint = fingerprint
            if not first:
                get_logger().info(
                    "token proxy CA reloaded", ca_file=str(path), ca_sha256=fingerprint[:16]
                )
        self._complaint = None

    def _complain(self, path: Path, why: str) -> None:
        if why == self._complaint:
            return
        self._complaint = why
        log = get_logger()
        if self.context is None:
            log.error("token proxy CA file unusable and no previous CA", ca_file=str(path), why=why)
        else:
            log.warning(
                "token proxy CA file unusable; keeping the previous CA", ca_file=str(path), why=why
            )
