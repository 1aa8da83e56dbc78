"""HTTP transports for token requests: pooled connections per trust configuration.

Clients are keyed by CA bundle (an identity's ``ca_file``, else ``SSL_CERT_FILE``/
``SSL_CERT_DIR``, else certifi's bundle) and proxy, keep connections alive and never follow
redirects. The proxy for a destination is chosen by ``proxy.ProxySettings`` (curl/Go rules,
CIDR ``NO_PROXY`` included); httpx's own environment handling (``trust_env``: proxies, .netrc)
is off. Tests pass an ``httpx.AsyncBaseTransport`` (e.g. ``httpx.MockTransport``) to run
without a network.

An identity with a ``token_proxy`` (AKS identity bindings) gets channels of its own, keyed by
its TLS server name and the CA bundle's fingerprint (``tokenproxy.ProxyTrust``): when the CA
file rotates, the next request gets new channels, and the old ones are closed once no request
is using it. Its connections go through ``HTTPS_PROXY`` like any other, unless ``NO_PROXY``
excludes the token proxy's address.

Requests go straight to httpx's transport layer (``httpx.AsyncHTTPTransport``, one
``httpcore`` connection pool each) through a ``Channel``, not through ``httpx.AsyncClient``: a
token request needs none of the client's layers (authentication, redirects, a cookie jar,
event hooks, URL merging), and each of them costs the event loop CPU on every request.
Without a cookie jar nothing a server sets is sent back on a later request. No
``Accept-Encoding`` is sent, and a compressed answer is refused (``entra.read_capped``).

Concurrency is spread over several transports per key, each with at most
``SHARD_CONNECTIONS`` connections; a leased request goes to the transport with the fewest
requests in flight (so sequential requests keep reusing one connection). httpcore's pool
checks every one of its connections on every request event (``_assign_requests_to_connections``:
``has_expired``, a readability probe through anyio's extra attributes, getpeername included),
so one pool's CPU per request grows with its size; many small pools cost less than one large
one for the same concurrency.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import certifi
import httpx

from entra_tokend import __version__
from entra_tokend.exchange.proxy import ProxySettings
from entra_tokend.exchange.tokenproxy import ProxyTrust
from entra_tokend.logging import get_logger
from entra_tokend.model import Identity

USER_AGENT = f"entra-tokend/{__version__}"

SHARD_CONNECTIONS = 1
"""Most connections one transport (one httpcore pool) is given; see the module docstring."""


def shard_sizes(max_connections: int) -> list[int]:
    """``max_connections`` split over as few transports as keep each at or under
    ``SHARD_CONNECTIONS``, as evenly as possible (with a bound of 4: 10 -> [4, 3, 3]). At
    least one transport of one connection."""
    total = max(1, max_connections)
    count = -(-total // SHARD_CONNECTIONS)
    base, extra = divmod(total, count)
    return [base + 1 if i < extra else base for i in range(count)]


class Channel:
    """One pooled transport and the request defaults of the pool: per-phase timeouts and the
    ``User-Agent``. What httpx's client would add and the daemon does not want is left out:
    redirects are never followed, no cookie is kept or sent, no proxy or .netrc is read from
    the environment, no compression is asked for."""

    __slots__ = ("_timeout", "transport")

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: httpx.Timeout) -> None:
        self.transport = transport
        self._timeout = timeout.as_dict()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send one request; the response's body is read inside the block and the
        connection released when it ends. Raises what the transport raises: an
        ``httpx.HTTPError`` (``TimeoutException``, ``ConnectError``, ...)."""
        request = httpx.Request(
            method,
            url,
            data=data,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
            extensions={"timeout": self._timeout},
        )
        response = await self.transport.handle_async_request(request)
        response.request = request
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self.transport.aclose()


class _Shards:
    """The channels of one key. A request goes to the channel with the fewest requests in
    flight (the first on a tie), so sequential requests reuse one connection and concurrent
    ones spread over every channel's pool."""

    __slots__ = ("_busy", "channels")

    def __init__(self, channels: list[Channel]) -> None:
        self.channels = channels
        self._busy = [0] * len(channels)

    def _least_busy(self) -> int:
        busy = self._busy
        return busy.index(min(busy))

    def take(self) -> Channel:
        """The least busy channel, for a caller that does not report when it is done."""
        return self.channels[self._least_busy()]

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Channel]:
        """The least busy channel, counted as busy until the block ends."""
        index = self._least_busy()
        self._busy[index] += 1
        try:
            yield self.channels[index]
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        for channel in self.channels:
            await channel.aclose()


def default_cafile() -> str | None:
    """The default trust: ``SSL_CERT_FILE``, else None when ``SSL_CERT_DIR`` is set, else
    certifi's bundle."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    if cafile is None and not os.environ.get("SSL_CERT_DIR"):
        cafile = certifi.where()
    return cafile


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying TLS context trusting ``ca_file`` (or the environment's/certifi's bundle)."""
    cafile = ca_file or default_cafile()
    capath = os.environ.get("SSL_CERT_DIR") or None
    return ssl.create_default_context(cafile=cafile, capath=capath)


ClientKey = tuple[object, ...]


class ClientPool:
    """The process's HTTP channels. ``timeout`` seconds per request phase; ``max_connections``
    per destination key (CA bundle and proxy), spread over ``shard_sizes(max_connections)``
    transports."""

    def __init__(
        self,
        timeout: float = 10.0,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.timeout = timeout
        self._timeout = httpx.Timeout(timeout)
        self.max_connections = max_connections
        self._limits = [
            httpx.Limits(max_connections=size, max_keepalive_connections=size)
            for size in shard_sizes(max_connections)
        ]
        self._transport = transport
        self.proxies = ProxySettings.from_env(os.environ if env is None else env)
        for entry in self.proxies.unusable:
            get_logger().warning(
                "NO_PROXY entry ignored: not a host, domain, IP address or CIDR range",
                entry=entry,
            )
        self._clients: dict[ClientKey, _Shards] = {}
        self._trusts: dict[ClientKey, ProxyTrust] = {}
        self._leases: dict[ClientKey, int] = {}
        self._retired: set[ClientKey] = set()

    def _shards(self, key: ClientKey, verify: ssl.SSLContext | None, proxy: str | None) -> _Shards:
        shards = self._clients.get(key)
        if shards is None:
            shards = _Shards(
                [
                    Channel(
                        self._transport
                        or httpx.AsyncHTTPTransport(
                            verify=verify if verify is not None else True,
                            limits=limits,
                            trust_env=False,  # proxies are chosen by ProxySettings
                            proxy=proxy,
                        ),
                        self._timeout,
                    )
                    for limits in self._limits
                ]
            )
            self._clients[key] = shards
        return shards

    @asynccontextmanager
    async def hold(self, ca_file: Path | None, url: str) -> AsyncIterator[Channel]:
        """Like ``channel``, counted as busy until the block ends, so that concurrent requests
        (a docker config's registries) spread over the channels instead of queueing on one."""
        async with self._direct(ca_file, url).hold() as channel:
            yield channel

    def channel(self, ca_file: Path | None, url: str) -> Channel:
        """A channel for a request to ``url`` trusting ``ca_file`` (None: the default trust
        store), through the proxy the environment chooses for ``url``: of that key's channels
        (which share one TLS context), the one with the fewest leased requests in flight."""
        return self._direct(ca_file, url).take()

    def _direct(self, ca_file: Path | None, url: str) -> _Shards:
        proxy = None if self._transport is not None else self.proxies.proxy_for(url)
        ca = str(ca_file) if ca_file else None
        key: ClientKey = (ca, proxy)
        shards = self._clients.get(key)
        if shards is not None:
            return shards
        return self._shards(key, ssl_context(ca) if self._transport is None else None, proxy)

    @asynccontextmanager
    async def lease(self, identity: Identity, url: str) -> AsyncIterator[Channel]:
        """The channel for ``identity``'s token request to ``url``, held for one request.

        Direct identities share ``channel(identity.ca_file, url)``. An identity with a
        ``token_proxy`` gets channels trusting its proxy CA and presenting its SNI name; a
        changed CA file is picked up here (``ProxyTrust.current``), and channels left behind
        by a rotation is closed when its last request ends. Raises
        ``tokenproxy.TrustUnavailable`` when the proxy CA file never held a usable bundle.
        """
        if identity.token_proxy is None:
            async with self._direct(identity.ca_file, url).hold() as channel:
                yield channel
            return
        settings: ClientKey = (
            identity.token_proxy,
            identity.token_proxy_sni_name,
            identity.token_proxy_ca_file,
            identity.token_proxy_ca_data,
        )
        trust = self._trusts.get(settings)
        if trust is None:
            trust = ProxyTrust(
                identity.token_proxy_sni_name,
                identity.token_proxy_ca_file,
                identity.token_proxy_ca_data,
                default_cafile(),
            )
            self._trusts[settings] = trust
        context = trust.current()
        proxy = None if self._transport is not None else self.proxies.proxy_for(url)
        key: ClientKey = ("token-proxy", settings, trust.fingerprint, proxy)
        for other in list(self._clients):
            if len(other) == 4 and other[:2] == key[:2] and other != key:
                self._retired.add(other)  # left behind by a CA rotation
                await self._close_if_idle(other)
        shards = self._shards(key, context, proxy)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            async with shards.hold() as channel:
                yield channel
        finally:
            self._leases[key] -= 1
            await self._close_if_idle(key)

    async def _close_if_idle(self, key: ClientKey) -> None:
        if key in self._retired and not self._leases.get(key):
            self._retired.discard(key)
            self._leases.pop(key, None)
            shards = self._clients.pop(key, None)
            if shards is not None:
                await shards.aclose()

    async def aclose(self) -> None:
        """Close every channel (idle connections included)."""
        for shards in self._clients.values():
            await shards.aclose()
        self._clients.clear()
        self._leases.clear()
        self._retired.clear()
