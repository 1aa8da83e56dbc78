"""Host and URL text: the loopback test, ``host:port`` as logs show it, hidden characters."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses, where plain http cannot leave the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_text(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::]:9464``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hidden_character(text: str) -> str | None:
    """The first space, tab or control character inside ``text`` (as ``repr`` shows it), else
    None. ``urllib.parse.urlsplit`` silently drops tabs and newlines (WHATWG URL rules) while
    httpx refuses them, so a URL that holds one would pass a check and fail every request."""
    for char in text:
        if char.isspace() or not char.isprintable():
            return repr(char)
    return None
