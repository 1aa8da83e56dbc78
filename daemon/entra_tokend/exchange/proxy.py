"""Which proxy (if any) a token request goes through, decided the way curl and Go decide it.

Variables (lower case wins over upper case, as in curl): ``HTTPS_PROXY`` for https
destinations, ``HTTP_PROXY`` for http ones, ``ALL_PROXY`` for either when the specific one is
unset; ``NO_PROXY`` lists destinations that go direct. ``NO_PROXY`` entries, comma-separated:

- ``*`` — nothing is proxied;
- a host name or domain: ``example.com`` and ``.example.com`` both match ``example.com`` and
  every subdomain (curl ≥ 7.86 and Go's httpproxy agree on this);
- an IP address (``10.0.0.1``, ``::1``, ``[::1]``) or a CIDR range (``10.0.0.0/8``,
  ``fd00::/8``), matched against IP-literal destinations;
- an optional ``:port`` after a host or bracketed IP limits the entry to that port.

An entry that is none of these is skipped and reported once (``unusable``), never an error.
A plain-http destination on loopback is never proxied: the assertion would cross the proxy in
clear text. (Sources: curl's CURLOPT_NOPROXY documentation; Go's
golang.org/x/net/http/httpproxy package documentation.)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from entra_tokend.util.net import is_loopback_host

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_DOMAIN_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name.lower())
    if value is None:
        value = env.get(name.upper())
    return value.strip() if value and value.strip() else None


@dataclass(frozen=True)
class _Entry:
    domain: str | None = None
    network: IPNetwork | None = None
    port: int | None = None


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if port.isascii() and port.isdigit():
            return host, int(port)
    return text, None


def _parse_entry(raw: str) -> _Entry | None:
    text = raw.strip().lower()
    try:
        return _Entry(network=ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    host, port = _split_port(text)
    try:
        return _Entry(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        if text.startswith("["):  # brackets hold an IPv6 address, nothing else
            return None
    domain = host[2:] if host.startswith("*.") else host.lstrip(".")
    if _DOMAIN_RE.match(domain):
        return _Entry(domain=domain, port=port)
    return None


@dataclass
class ProxySettings:
    """Proxy URLs and NO_PROXY rules read once from an environment."""

    https: str | None = None
    http: str | None = None
    bypass_all: bool = False
    entries: list[_Entry] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxySettings:
        """Read ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY`` (either case)."""
        every = _env(env, "ALL_PROXY")
        settings = cls(
            https=_env(env, "HTTPS_PROXY") or every, http=_env(env, "HTTP_PROXY") or every
        )
        for raw in (_env(env, "NO_PROXY") or "").split(","):
            if not raw.strip():
                continue
            if raw.strip() == "*":
                settings.bypass_all = True
                continue
            entry = _parse_entry(raw)
            if entry is None:
                settings.unusable.append(raw.strip())
            else:
                settings.entries.append(entry)
        return settings

    def bypassed(self, host: str, port: int) -> bool:
        """True when NO_PROXY sends ``host``:``port`` direct."""
        if self.bypass_all:
            return True
        host = host.lower().strip("[]").rstrip(".")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                host
            )
        except ValueError:
            address = None
        for entry in self.entries:
            if entry.port is not None and entry.port != port:
                continue
            if entry.network is not None:
                if (
                    address is not None
                    and address.version == entry.network.version
                    and address in entry.network
                ):
                    return True
            elif entry.domain is not None and (
                host == entry.domain or host.endswith("." + entry.domain)
            ):
                return True
        return False

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL for a request to ``url``, or None to connect directly."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        if scheme == "http" and is_loopback_host(host):
            return None
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.bypassed(host, port):
            return None
        return proxy
