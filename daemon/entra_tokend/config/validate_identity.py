"""Pure validation of ``[identity.NAME]`` tables: who authenticates, against which authority,
through which identity-binding token proxy. The default identity falls back to the variables
the workload identity webhook injects (``IDENTITY_ENV``)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from entra_tokend.config.schema import (
    DEFAULT_AUTHORITY,
    DEFAULT_IDENTITY,
    IDENTITY_ENV,
    IDENTITY_KEYS,
    TENANT_RE,
    TOKEN_PROXY_KEYS,
)
from entra_tokend.config.validate import Problems, check_keys, has_nul
from entra_tokend.model import Identity
from entra_tokend.util.net import hidden_character, is_loopback_host
from entra_tokend.util.pem import pem_problem

# A DNS name usable as a TLS server name (RFC 1123 labels; '_' tolerated as resolvers do).
_SERVER_NAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$"
)


def authority(value: str, where: str, p: Problems) -> str:
    """An authority host URL without its trailing slash; http only for loopback; a port, if
    any, 1-65535; no space, tab or control character inside (httpx refuses those)."""
    url = value.strip().rstrip("/")
    hidden = hidden_character(url)
    if hidden is not None:
        p.add(f"{where}: holds {hidden}; write the URL without spaces or control characters")
        return url
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError:  # an unclosed '[' of an IPv6 literal, a port beyond 65535
        p.add(f"{where}: '{value}' is not an http(s) URL (https://HOST[:PORT], port 1-65535)")
        return url
    if parts.username is not None or parts.password is not None:
        # Not echoed: the user information may be a password.
        p.add(f"{where}: must not contain user information (user:password@); use https://HOST")
        return url
    if parts.scheme not in ("https", "http") or not hostname:
        p.add(f"{where}: '{value}' is not an http(s) URL")
    elif parts.path not in ("", "/"):
        p.add(
            f"{where}: '{value}' must be https://HOST[:PORT] without a path "
            "(the tenant belongs in tenant_id)"
        )
    elif parts.scheme == "http" and not is_loopback_host(hostname):
        p.add(f"{where}: '{value}' uses plain http; only loopback authorities may (use https)")
    elif parts.query or parts.fragment:
        # Not echoed whole: a query may carry a signature or key.
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        p.add(f"{where}: '{shown}?…' must not have a query or fragment")
    return url


def identity_settings(
    name: str, table: dict[str, Any], env: Mapping[str, str], where: str, p: Problems
) -> dict[str, str]:
    """An identity's string settings, the default identity's falling back to AZURE_* vars."""
    check_keys(table, IDENTITY_KEYS, where, p)
    resolved: dict[str, str] = {}
    for key in IDENTITY_KEYS:
        setting: Any = table.get(key)
        env_var = IDENTITY_ENV.get(key) if name == DEFAULT_IDENTITY else None
        if setting is None and env_var and env.get(env_var):
            setting = env[env_var]
        if setting is not None and not isinstance(setting, str):
            p.add(f"{where}.{key}: must be a string")
            setting = None
        elif has_nul(setting, f"{where}.{key}", p):
            setting = None
        if setting:
            resolved[key] = setting
    return resolved


def identity(
    name: str, table: dict[str, Any], env: Mapping[str, str], base: Path, p: Problems
) -> Identity | None:
    """An ``[identity.NAME]`` table (the default one may come from AZURE_* variables)."""
    where = f"identity.{name}"
    resolved = identity_settings(name, table, env, where, p)
    missing = False
    for key in ("tenant_id", "client_id", "token_file"):
        if key not in resolved:
            var = IDENTITY_ENV[key]
            if p.offline and name == DEFAULT_IDENTITY:
                p.later.append(f"{where}.{key} ({var})")
                resolved[key] = ""  # a placeholder: an offline Config is rendered, never run
                continue
            missing = True
            hint = f"set {var} or {where}.{key}" if name == DEFAULT_IDENTITY else where
            p.add(f"{where}: {key} is not set ({hint})")
    if missing:
        return None
    if resolved["tenant_id"] and not TENANT_RE.match(resolved["tenant_id"]):
        p.add(f"{where}.tenant_id: '{resolved['tenant_id']}' is not a tenant id or domain")
    var_hint = f" ({IDENTITY_ENV['authority_host']})" if name == DEFAULT_IDENTITY else ""
    url = authority(
        resolved.get("authority_host", DEFAULT_AUTHORITY), f"{where}.authority_host{var_hint}", p
    )
    proxy_file = resolved.get("token_proxy_ca_file")
    return Identity(
        name=name,
        tenant_id=resolved["tenant_id"],
        client_id=resolved["client_id"],
        token_file=Path(resolved["token_file"]),
        authority_host=url,
        ca_file=base / resolved["ca_file"] if "ca_file" in resolved else None,
        **token_proxy(name, resolved, where, p),
        token_proxy_ca_file=base / proxy_file if proxy_file else None,
    )


def token_proxy(name: str, resolved: Mapping[str, str], where: str, p: Problems) -> dict[str, Any]:
    """Check an identity's AKS identity-binding settings; returns the ``token_proxy``,
    ``token_proxy_sni_name`` and ``token_proxy_ca_data`` fields of its ``Identity``.

    The rules are azure-identity 1.27's (``_credentials/workload_identity.py``: CA file and CA
    data together, or an SNI name/CA without ``AZURE_KUBERNETES_TOKEN_PROXY``, raise
    ValueError; ``_internal/token_binding_transport_mixin.py`` ``_validate_url``: the proxy URL
    must be https without user name, password, fragment or query). An unset or empty variable
    counts as not given, as ``os.environ.get(...)`` followed by a truth test does there.
    """

    def label(key: str) -> str:
        var = f" ({IDENTITY_ENV[key]})" if name == DEFAULT_IDENTITY else ""
        return f"{where}.{key}{var}"

    proxy = resolved.get("token_proxy")
    sni = resolved.get("token_proxy_sni_name")
    ca_data = resolved.get("token_proxy_ca_data")
    if proxy is None:
        for key in TOKEN_PROXY_KEYS[1:]:
            if key in resolved:
                p.add(
                    f"{label(key)}: set without {label('token_proxy')}; "
                    "give the identity-binding token proxy URL or remove this setting"
                )
        return {}
    if "token_proxy_ca_file" in resolved and ca_data is not None:
        p.add(
            f"{label('token_proxy_ca_file')}, {label('token_proxy_ca_data')}: "
            "both are set; give the token proxy's CA as a file or as PEM text, not both"
        )
    proxy_url(proxy, label("token_proxy"), p)
    if sni is not None and not _usable_server_name(sni):
        p.add(f"{label('token_proxy_sni_name')}: '{sni}' is not a DNS name or IP address")
    if ca_data is not None and (why := pem_problem(ca_data)):
        p.add(f"{label('token_proxy_ca_data')}: {why}")
    return {"token_proxy": proxy, "token_proxy_sni_name": sni, "token_proxy_ca_data": ca_data}


def proxy_url(value: str, where: str, p: Problems) -> None:
    """The identity-binding token proxy URL: ``https://HOST[:PORT][/BASE/PATH]`` and nothing
    more (no user information, query or fragment; azure-identity ``_validate_url``)."""
    hidden = hidden_character(value)
    if hidden is not None:
        p.add(f"{where}: holds {hidden}; write the URL without spaces or control characters")
        return
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        if parts.port == 0:  # and a port out of range raises ValueError
            raise ValueError("port 0")
    except ValueError:
        p.add(f"{where}: '{value}' is not an https URL (https://HOST[:PORT][/PATH], port 1-65535)")
        return
    if parts.username is not None or parts.password is not None:
        # Not echoed: the user information may be a password.
        p.add(f"{where}: must not contain user information (user:password@)")
    elif parts.scheme != "https" or not hostname:
        p.add(
            f"{where}: '{value}' must be an https URL such as https://10.0.0.10/base "
            "(the token proxy is reached over TLS only)"
        )
    elif parts.query or parts.fragment:
        # Not echoed whole: a query may carry a signature or key.
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        p.add(f"{where}: '{shown}?…' must not have a query or fragment")


def _usable_server_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return bool(_SERVER_NAME_RE.match(name))
    return True
