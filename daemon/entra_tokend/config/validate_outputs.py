"""Pure validation of a token's output settings: format keys, env names, templates, registries."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from entra_tokend.config.schema import FORMAT_KEYS
from entra_tokend.config.validate import Problems, has_nul
from entra_tokend.model import registry_key
from entra_tokend.util.formats import ENV_NAME_RE, check_template
from entra_tokend.util.net import hidden_character, is_loopback_host

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def format_keys(table: Mapping[str, Any], fmt: str, where: str, p: Problems) -> None:
    """Report format settings given for a format that does not use them."""
    for key, formats in FORMAT_KEYS.items():
        if key in table and fmt not in formats:
            p.add(f"{where}.{key}: only used with format = \"{formats[0]}\" (format is '{fmt}')")
    if fmt == "docker-config" and "registry" not in table:
        p.add(f'{where}.registry: format = "docker-config" needs registry = "NAME.azurecr.io"')


def env_name(value: Any, default: str, where: str, p: Problems) -> str:
    """A variable name of ``format = "env"``: letters, digits and '_', not starting with a
    digit (what a shell, systemd and docker all accept)."""
    if value is None:
        return default
    if not isinstance(value, str) or not ENV_NAME_RE.match(value):
        p.add(
            f"{where}: {value!r} is not a variable name "
            "(letters, digits and '_', not starting with a digit; e.g. \"PGPASSWORD\")"
        )
        return default
    return value


def template_text(text: Any, where: str, p: Problems) -> str | None:
    """A template's text: a string whose fields are all known and whose syntax is valid."""
    if not isinstance(text, str):
        p.add(f"{where}: must be a string")
        return None
    if has_nul(text, where, p):
        return None
    problems = check_template(text)
    for problem in problems:
        p.add(f"{where}: {problem}")
    return None if problems else text


def template_path(value: Any, base: Path, where: str, p: Problems) -> Path | None:
    """A ``template_file`` setting → its path (relative to the config file's directory); the
    file itself is read by the host checks."""
    if not isinstance(value, str) or not value:
        p.add(f"{where}: must be a path string")
        return None
    if has_nul(value, where, p):
        return None
    return base / value


def registry_host(value: Any, where: str, p: Problems) -> str | None:
    """One registry: ``host[:port]`` (https), or ``http://host[:port]`` for a loopback registry
    only (the rule of ``authority_host``); returned lower-cased, without a trailing slash."""
    if not isinstance(value, str) or not value:
        p.add(f'{where}: must be a registry name such as "myregistry.azurecr.io"')
        return None
    text = value.strip().rstrip("/").lower()
    hidden = hidden_character(text)
    if hidden is not None:
        p.add(f"{where}: holds {hidden}; write the registry name without spaces or controls")
        return None
    scheme = "https"
    if "://" in text:
        scheme, _, text = text.partition("://")
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
        parts = urlsplit("")
    ip = None
    if host:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
    good_host = bool(host) and (
        ip is not None or all(_DNS_LABEL.match(label) for label in (host or "").split("."))
    )
    if (
        scheme not in ("http", "https")
        or not good_host
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
        or port == 0
    ):
        p.add(
            f"{where}: '{value}' is not a registry host[:port] "
            '(e.g. "myregistry.azurecr.io"; no path)'
        )
        return None
    if scheme == "http" and not is_loopback_host(host or ""):
        p.add(f"{where}: '{value}' uses plain http; only loopback registries may (drop http://)")
        return None
    return f"http://{text}" if scheme == "http" else text


def registries(value: Any, where: str, p: Problems) -> tuple[str, ...]:
    """``registry``: one registry or a non-empty list of distinct ones."""
    items = value if isinstance(value, list) else [value]
    if not items:
        p.add(f"{where}: must name at least one registry")
    found: list[str] = []
    for item in items:
        host = registry_host(item, where, p)
        if host is None:
            continue
        if registry_key(host) in {registry_key(h) for h in found}:
            p.add(f"{where}: '{item}' is listed twice")
            continue
        found.append(host)
    return tuple(found)
