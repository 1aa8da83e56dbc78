"""HTTP clients for token requests: one pooled ``httpx.AsyncClient`` per trust configuration.

Clients are keyed by CA bundle (an identity's ``ca_file``, else ``SSL_CERT_FILE``/
``SSL_CERT_DIR``, else certifi's bundle) and proxy, keep connections alive and never follow
redirects. The proxy for a destination is chosen by ``proxy.ProxySettings`` (curl/Go rules,
CIDR ``NO_PROXY`` included); httpx's own environment handling (``trust_env``: proxies, .netrc)
is off. Tests pass an ``httpx.AsyncBaseTransport`` (e.g. ``httpx.MockTransport``) to run
without a network.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

import httpx

from entra_tokend import __version__
from entra_tokend.exchange.proxy import ProxySettings
from entra_tokend.logging import get_logger

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
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.timeout = timeout
        self._timeout = httpx.Timeout(timeout)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._transport = transport
        self.proxies = ProxySettings.from_env(os.environ if env is None else env)
        for entry in self.proxies.unusable:
            get_logger().warning(
                "NO_PROXY entry ignored: not a host, domain, IP address or CIDR range",
                entry=entry,
            )
        self._clients: dict[tuple[str | None, str | None], httpx.AsyncClient] = {}

    def client(self, ca_file: Path | None, url: str) -> httpx.AsyncClient:
        """The client for a request to ``url`` trusting ``ca_file`` (None: the default trust
        store), through the proxy the environment chooses for ``url``."""
        proxy = None if self._transport is not None else self.proxies.proxy_for(url)
        key = (str(ca_file) if ca_file else None, proxy)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                verify=ssl_context(key[0]) if self._transport is None else True,
                timeout=self._timeout,
                limits=self._limits,
                trust_env=False,  # proxies are chosen above; no .netrc
                proxy=proxy,
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
