"""The Entra v2 token endpoint: the request, sent directly or through an identity-binding proxy.

One request: ``POST {authority_host}/{tenant}/oauth2/v2.0/token`` with the client-credentials
grant and the projected token as a jwt-bearer client assertion (Microsoft identity platform,
"client credentials flow: second case, access token request with a certificate/federated
credential"). What the answer means — the parsed ``AccessToken`` or exactly one
``ExchangeError`` subclass — is ``answers``' (re-exported here). This module knows nothing of
*when* requests happen or where tokens go.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx

from entra_tokend.exchange.answers import (
    B64TOKEN_RE,
    HINT_PROXY_TLS,
    MAX_LIFETIME,
    MAX_RETRY_AFTER,
    MIN_LIFETIME,
    classify,
    error_details,
    parse_retry_after,
    parse_token_response,
)
from entra_tokend.exchange.errors import (
    InvalidResponse,
    NetworkError,
    RequestTimeout,
)
from entra_tokend.exchange.tokenproxy import TrustUnavailable
from entra_tokend.exchange.transport import ClientPool
from entra_tokend.model import AccessToken, Clock, Identity, SystemClock

__all__ = [
    "B64TOKEN_RE",
    "MAX_BODY_BYTES",
    "MAX_LIFETIME",
    "MAX_RETRY_AFTER",
    "MIN_LIFETIME",
    "EntraExchange",
    "error_details",
    "parse_retry_after",
    "parse_token_response",
    "proxied_url",
    "read_capped",
    "request_url",
    "token_endpoint",
]

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_BODY_BYTES = 1024 * 1024


def token_endpoint(identity: Identity) -> str:
    """The Entra v2 token endpoint URL of ``identity``'s tenant."""
    return f"{identity.authority_host}/{identity.tenant_id}/oauth2/v2.0/token"


def proxied_url(proxy: str, url: str) -> str:
    """``url`` sent through an AKS identity-binding token proxy at ``proxy``.

    The rule of azure-identity 1.27 (``_internal/token_binding_transport_mixin.py``
    ``_update_request_url``): scheme and ``host[:port]`` of the proxy; path = the proxy's path
    without trailing slashes + ``/`` + the request's path without leading slashes; the
    request's own query and fragment kept (the proxy URL has none: validation forbids them).
    ``https://10.0.0.1/base/`` and ``https://login.example/t/oauth2/v2.0/token?x=1`` give
    ``https://10.0.0.1/base/t/oauth2/v2.0/token?x=1``.
    """
    req = urlsplit(url)
    base = urlsplit(proxy)
    path = base.path.rstrip("/") + "/" + req.path.lstrip("/")
    return urlunsplit((base.scheme, base.netloc, path, req.query, req.fragment))


def request_url(identity: Identity) -> str:
    """Where ``identity``'s token request goes: its tenant's token endpoint, through its
    ``token_proxy`` when it has one."""
    url = token_endpoint(identity)
    return proxied_url(identity.token_proxy, url) if identity.token_proxy else url


class EntraExchange:
    """Exchanges a client assertion for an access token at an identity's Entra tenant."""

    def __init__(
        self, pool: ClientPool, clock: Clock | None = None, timeout: float | None = None
    ) -> None:
        self._pool = pool
        self._clock: Clock = clock or SystemClock()
        # The whole exchange (connect, send, every byte of the answer) ends within this many
        # seconds; httpx's own timeouts apply per phase, so a body trickling in one byte a
        # second would otherwise never time out.
        self._timeout = timeout if timeout is not None else pool.timeout
        # Parsed once per URL (one per identity): httpx parses a str URL on every request.
        self._urls: dict[str, httpx.URL] = {}

    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        """Request an access token for ``scope`` with ``assertion`` as the client assertion.

        Returns an ``AccessToken`` stamped with the identity's tenant and client ids.
        Raises an ``ExchangeError`` subclass; its text never holds the assertion or a token.
        """
        request_id = str(uuid.uuid4())
        form = {
            "client_id": identity.client_id,
            "scope": scope,
            "grant_type": GRANT_TYPE,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        headers = {"x-ms-client-request-id": request_id, "return-client-request-id": "true"}
        sent_at = self._clock.wall()
        url = request_url(identity)
        proxy = identity.token_proxy
        peer = f"token proxy {proxy}" if proxy else identity.authority_host
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._pool.lease(identity, url) as channel,
                channel.stream("POST", self._parsed(url), data=form, headers=headers) as response,
            ):
                body = await read_capped(response, request_id)
                status = response.status_code
                retry_after_header = response.headers.get("retry-after")
        except TrustUnavailable as exc:
            raise NetworkError(str(exc), request_id=request_id, hint=HINT_PROXY_TLS) from None
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise RequestTimeout(
                f"no complete answer from {peer} within {self._timeout:g} s ({type(exc).__name__})",
                request_id=request_id,
            ) from None
        except (httpx.HTTPError, OSError, ValueError) as exc:
            # Only the exception's type: the HTTP stack's texts can quote the bytes it read
            # (a response body holding a token) or sent.
            tls = proxy is not None and _tls_reason(exc) is not None
            raise NetworkError(
                f"cannot reach {peer}: {type(exc).__name__} ({_describe(exc)})",
                request_id=request_id,
                hint=HINT_PROXY_TLS if tls else None,
            ) from None
        if status != 200:
            raise classify(
                status, body, retry_after_header, request_id, self._clock.wall(), proxy=proxy
            )
        token = parse_token_response(body, scope, request_id, sent_at)
        if token.token == assertion:
            # A broken or hostile service echoing the client assertion: writing it out would
            # hand the service-account token to every reader of the token file.
            raise InvalidResponse(
                "token response returned the client assertion as the access token",
                request_id=request_id,
            )
        return AccessToken(
            token=token.token,
            token_type=token.token_type,
            expires_in=token.expires_in,
            expires_on=token.expires_on,
            refresh_in=token.refresh_in,
            scope=scope,
            request_id=request_id,
            tenant_id=identity.tenant_id,
            client_id=identity.client_id,
        )

    def _parsed(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:  # identities come and go with reloads
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed


def _describe(exc: BaseException) -> str:
    """A fixed description of a transport failure, chosen by type (never the exception text)."""
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (httpx.ConnectError, "connection failed: refused, unreachable, DNS or TLS handshake"),
        (httpx.ReadError, "connection broken while reading the answer"),
        (httpx.WriteError, "connection broken while sending the request"),
        (httpx.RemoteProtocolError, "the server broke the HTTP protocol"),
        (httpx.ProxyError, "the proxy refused or failed the request"),
        (httpx.UnsupportedProtocol, "unsupported URL scheme"),
        (httpx.DecodingError, "the answer could not be decoded"),
        (OSError, "operating-system error on the connection"),
    )
    tls = _tls_reason(exc)
    if tls is not None:
        return f"TLS: {tls}"
    for kind, text in kinds:
        if isinstance(exc, kind):
            return text
    return "transport error"


def _tls_reason(exc: BaseException) -> str | None:
    """OpenSSL's reason code (and verify message) from an SSL error in the cause chain: fixed
    library texts such as CERTIFICATE_VERIFY_FAILED, never data from the connection."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            reason = getattr(seen, "reason", None) or type(seen).__name__
            verify = getattr(seen, "verify_message", None)
            return f"{reason} ({verify})" if verify else str(reason)
        seen = seen.__cause__ or seen.__context__
    return None


async def read_capped(response: httpx.Response, request_id: str) -> bytes:
    """The whole body, or InvalidResponse past MAX_BODY_BYTES (a hostile or broken server).

    The request asks for no compression (``Channel``), and a body compressed anyway is refused
    unread: httpx would inflate a whole received chunk before the cap is checked, and a few
    hundred bytes of gzip-in-gzip inflate to hundreds of MiB."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidResponse(
            "compressed answer (Content-Encoding) although none was asked for",
            request_id=request_id,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidResponse(
                f"response body larger than {MAX_BODY_BYTES} bytes", request_id=request_id
            )
        chunks.append(chunk)
    return b"".join(chunks)
