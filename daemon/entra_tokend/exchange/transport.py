"""HTTP clients for token requests: one pooled ``httpx.AsyncClient`` per trust configuration.

Clients are keyed by CA bundle (an identity's ``ca_file``, else ``SSL_CERT_FILE``/
``SSL_CERT_DIR``, else certifi's bundle), keep connections alive, never follow redirects, and
read ``HTTPS_PROXY``/``NO_PROXY`` from the environment (``trust_env``). Tests pass an
``httpx.AsyncBaseTransport`` (e.g. ``httpx.MockTransport``) to run without a network.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx

from entra_tokend import __version__

USER_AGENT = f"entra-tokend/{__version__}"


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying TLS context trusting ``ca_file`` (or the environment's/certifi's bundle)."""
    cafile = ca_file or os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        import certifi  # noqa: PLC0415 - httpx's own dependency; only needed for the default

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


class ClientPool:
    """The process's HTTP clients. ``timeout`` seconds per request phase; ``max_connections``
    per client."""

    def __init__(
        self,
        timeout: float = 10.0,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._timeout = httpx.Timeout(timeout)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._transport = transport
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def client(self, ca_file: Path | None) -> httpx.AsyncClient:
        """The client for requests trusting ``ca_file`` (None: the default trust store)."""
        key = str(ca_file) if ca_file else None
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                verify=ssl_context(key) if self._transport is None else True,
                timeout=self._timeout,
                limits=self._limits,
                trust_env=self._transport is None,  # HTTPS_PROXY / NO_PROXY
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
                transport=self._transport,
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every client (idle connections included)."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
