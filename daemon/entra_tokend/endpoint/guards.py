"""Header guards: the endpoint answers local programs, never a web page or a proxy.

The listener is loopback-only (``[endpoint] listen``), but two things can still reach it on a
caller's behalf:

* a browser: a page on a DNS-rebound name (``evil.example`` resolving to 127.0.0.1) is
  same-origin with the endpoint, so its requests carry no ``Origin``; they do carry the page's
  name in ``Host``. Other browser requests carry ``Origin`` or the Fetch Metadata headers
  (``Sec-Fetch-Site``, ``-Dest``, ``-User``, which browsers send together with
  ``Sec-Fetch-Mode``). ``Sec-Fetch-Mode`` alone is not refused: Node's built-in ``fetch``
  (undici, which msal-node uses) sends ``Sec-Fetch-Mode: cors`` and nothing else of the set;
* a proxy on the host, used for server-side request forgery: it adds ``Forwarded``,
  ``X-Forwarded-*``, ``X-Real-IP`` or ``Via``.

Both protocols (App Service and IMDS) require a ``Host`` naming the loopback listener — a
loopback IP literal (``127.0.0.1``, any of 127.0.0.0/8, ``[::1]``) or ``localhost``, with an
optional port; the listener's own address is one of these, since ``listen`` must be loopback
— and refuse the browser headers (``BROWSER``). IMDS, which has no secret, also refuses the
proxy headers (``PROXY``), like the real IMDS; App Service does not, because its secret is what
protects it and an egress proxy on the same host may legitimately add them. Every refusal is a
``BAD_REQUEST`` naming the header.
"""

from __future__ import annotations

import ipaddress

from entra_tokend.endpoint.core import Kind, Refusal
from entra_tokend.httpserver import Request

BROWSER = ("origin", "sec-fetch-site", "sec-fetch-dest", "sec-fetch-user")
"""Header names only browsers send (not ``sec-fetch-mode``: Node's ``fetch`` sends it too)."""
PROXY = ("forwarded", "x-forwarded-", "x-real-ip", "via")
"""Header names (``X-Forwarded-*`` by prefix: For, Host, Proto...) proxies add."""


def loopback_host(value: str) -> bool:
    """True when a ``Host`` header value names a loopback listener: a loopback IPv4 literal,
    ``[IPv6 loopback]`` in brackets or ``localhost`` (any case), each with an optional
    ``:port`` (digits). Anything else — a DNS name, ``127.1``, a bare ``::1`` — is False."""
    text = value.strip()
    bracketed = text.startswith("[")
    if bracketed:
        name, closed, port = text[1:].partition("]")
        if not closed or (port and not port.startswith(":")):
            return False
        port = port[1:]
    else:
        name, _, port = text.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return False
    if not bracketed and name.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback and bracketed == (address.version == 6)


def _named(header: str, refused: tuple[str, ...]) -> bool:
    return any(header.startswith(n) if n.endswith("-") else header == n for n in refused)


def guard(request: Request, refused: tuple[str, ...]) -> Refusal | None:
    """The refusal for a request whose ``Host`` is missing or names no loopback listener, or
    that carries a header of ``refused`` (names as in ``BROWSER``/``PROXY``); None when it
    passes. Messages name the header; they never show a header's value."""
    host = request.headers.get("host")
    if host is None or not loopback_host(host):
        return Refusal(
            Kind.BAD_REQUEST,
            "the Host header must name the loopback listener (127.0.0.1, [::1] or localhost, "
            "with an optional port)",
            {"header": "host"},
        )
    for header in sorted(request.headers):
        if _named(header, refused):
            title = "-".join(part.capitalize() for part in header.split("-"))
            return Refusal(
                Kind.BAD_REQUEST,
                f"requests carrying the {title} header are refused (a proxy or a browser sent it)",
                {"header": header},
            )
    return None
