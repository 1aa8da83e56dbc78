"""Pure validation of the ``[endpoint]`` table (the local managed-identity endpoint)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entra_tokend.config.schema import (
    DEFAULT_IDENTITY,
    ENDPOINT_IDLE_TIMEOUT,
    ENDPOINT_KEYS,
    NAME_RE,
)
from entra_tokend.config.validate import (
    Problems,
    check_keys,
    check_scope,
    finite,
    has_nul,
    parse_listen,
    typed,
)
from entra_tokend.model import Grant, Identity, empty_segment, is_resource_uri, resource_key


def endpoint(
    table: Any, env: Mapping[str, str], base: Path, p: Problems
) -> tuple[tuple[str, int], tuple[Grant, ...], float, str | None, Path | None] | None:
    """The ``[endpoint]`` table's pure part: (listen, grants, idle_timeout, secret_env value,
    secret_file path). Reading ``secret_file`` is a host check (``entra_tokend.preflight``).

    ``listen`` must be a loopback address (``127.0.0.1:PORT``, ``[::1]:PORT``): anyone who can
    reach the endpoint gets tokens. Exactly one of ``secret_file``/``secret_env`` names the
    header secret; the secret itself is never accepted in the TOML (a ``secret`` key is an
    unknown key). ``allow`` entries are a resource string (the default identity) or a table
    ``{resource = "...", identity = "NAME"}``.
    """
    where = "endpoint"
    if not isinstance(table, dict):
        p.add(f"{where}: must be a table")
        return None
    check_keys(table, ENDPOINT_KEYS, where, p)
    if "secret" in table:
        p.add(f"{where}.secret: never put the secret in the TOML; use secret_file or secret_env")
    listen_value = table.get("listen", "127.0.0.1:8081")
    address: tuple[str, int] | None = None
    if not isinstance(listen_value, str):
        p.add(f'{where}.listen: must be a string such as "127.0.0.1:8081"')
    else:
        try:
            address = parse_listen(listen_value)
        except ValueError as exc:
            p.add(f"{where}.listen: '{listen_value}': {exc}")
        else:
            host_text = address[0]
            try:
                loopback = ipaddress.ip_address(host_text).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                p.add(
                    f"{where}.listen: '{listen_value}' is not a loopback address; anyone who can "
                    "reach the endpoint gets tokens (use 127.0.0.1:PORT or [::1]:PORT)"
                )
                address = None
    secret_env, secret_file = table.get("secret_env"), table.get("secret_file")
    env_value: str | None = None
    file_path: Path | None = None
    if (secret_env is None) == (secret_file is None):
        p.add(
            f"{where}: set exactly one of secret_file (a file holding the X-IDENTITY-HEADER "
            "secret) or secret_env (the name of an environment variable holding it)"
        )
    elif secret_env is not None:
        if not isinstance(secret_env, str) or not secret_env or has_nul(secret_env, where, p):
            p.add(f"{where}.secret_env: must be the name of an environment variable")
        elif not env.get(secret_env, "").strip() and p.offline:
            p.later.append(f"{where}.secret_env ({secret_env})")
            env_value = ""  # a placeholder: an offline Config is rendered, never run
        elif not env.get(secret_env, "").strip():
            p.add(f"{where}.secret_env: environment variable {secret_env} is not set or empty")
        else:
            env_value = env[secret_env].strip()
    elif not isinstance(secret_file, str) or not secret_file:
        p.add(f"{where}.secret_file: must be a path string")
    elif not has_nul(secret_file, f"{where}.secret_file", p):
        file_path = base / secret_file
    idle = table.get("idle_timeout", ENDPOINT_IDLE_TIMEOUT)
    if not typed(idle, (int, float)) or not finite(idle) or not 10 <= idle <= 86400:
        p.add(f"{where}.idle_timeout: must be a number of seconds between 10 and 86400")
        idle = ENDPOINT_IDLE_TIMEOUT
    grants = endpoint_grants(table.get("allow", []), p)
    if address is None:
        return None
    return address, grants, float(idle), env_value, file_path


def endpoint_grants(allow: Any, p: Problems) -> tuple[Grant, ...]:
    """``[endpoint] allow`` → grants, in order; duplicates reported."""
    where = "endpoint.allow"
    if not isinstance(allow, list):
        p.add(f'{where}: must be a list such as ["https://storage.azure.com"]')
        return ()
    grants: list[Grant] = []
    for index, entry in enumerate(allow):
        at = f"{where}[{index}]"
        ident: Any = DEFAULT_IDENTITY
        if isinstance(entry, dict):
            check_keys(entry, ("resource", "identity"), at, p)
            resource, ident = entry.get("resource"), entry.get("identity", DEFAULT_IDENTITY)
        else:
            resource = entry
        if not isinstance(resource, str) or not resource.strip():
            p.add(f'{at}: a resource string or {{resource = "...", identity = "NAME"}}')
            continue
        if not isinstance(ident, str) or not NAME_RE.match(ident):
            p.add(f"{at}.identity: must be an identity name")
            continue
        key = resource_key(resource)
        why = check_scope(key + "/.default")
        if why or not is_resource_uri(key):
            p.add(
                f"{at}: '{resource}' is not a resource such as 'https://storage.azure.com' "
                "(an absolute URI, or an app ID URI api://...)"
            )
            continue
        if empty_segment(key):  # the endpoint refuses such a resource: the entry is dead
            p.add(
                f"{at}: '{resource}' has an empty path segment ('//' after the host); no "
                "request could match it"
            )
            continue
        grant = Grant(resource=key, identity=ident)
        if grant in grants:
            p.add(f"{at}: '{resource}' for identity '{ident}' is listed twice")
            continue
        grants.append(grant)
    return tuple(grants)


def endpoint_imds(table: Mapping[str, Any], p: Problems) -> bool:
    """``[endpoint] imds``: serve the IMDS protocol too (a boolean, default false). It shares
    the endpoint's listener, which is loopback-only (``listen``)."""
    value = table.get("imds", False)
    if not isinstance(value, bool):
        p.add("endpoint.imds: must be true or false (serve the IMDS protocol on the listener)")
        return False
    return value


_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_ARM_ID = re.compile(r"^/subscriptions/[^/\s]+/resource[gG]roups/[^/\s]+/providers/[!-~]+$")


def identity_selectors(table: Mapping[str, Any], where: str, p: Problems) -> dict[str, str]:
    """An identity's ``object_id`` (a GUID) and ``resource_id`` (an ARM resource id,
    ``/subscriptions/…/resourceGroups/…/providers/Microsoft.ManagedIdentity/
    userAssignedIdentities/NAME``): what the endpoint's ``object_id``/``principal_id`` and
    ``mi_res_id``/``msi_res_id`` parameters select by. Returns the ``Identity`` fields set."""
    found: dict[str, str] = {}
    for key, pattern, example in (
        ("object_id", _GUID, "a GUID such as 00000000-0000-0000-0000-000000000000"),
        ("resource_id", _ARM_ID, "an ARM id /subscriptions/S/resourceGroups/G/providers/..."),
    ):
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not pattern.match(value):
            p.add(f"{where}.{key}: must be {example}")
            continue
        found[key] = value
    return found


def unique_selectors(
    identities: Mapping[str, Identity], p: Problems, *, endpoint: bool = False
) -> None:
    """Two identities with one ``object_id`` or ``resource_id`` — or, when ``endpoint`` (an
    ``[endpoint]`` table is configured), one ``client_id`` — would make a selector ambiguous
    (the endpoint would silently pick one): each repeat, compared case-insensitively, is a
    problem naming the second identity's key. Without an endpoint nothing selects by
    ``client_id``, so two identities may share one (e.g. one app in two tenants)."""
    keys = ("client_id", "object_id", "resource_id") if endpoint else ("object_id", "resource_id")
    for key in keys:
        seen: dict[str, str] = {}
        for name, ident in identities.items():
            value = getattr(ident, key)
            if not value:  # unset, or check-config --offline's placeholder for a pod variable
                continue
            first = seen.setdefault(value.lower(), name)
            if first != name:
                p.add(
                    f"identity.{name}.{key}: identity.{first} has the same {key} (the "
                    "endpoint's selectors need one identity per value)"
                )


MIN_ENDPOINT_SECRET = 16
"""Characters: an X-IDENTITY-HEADER secret shorter than this is refused (Azure's is a GUID)."""


def secret_problem(secret: str, key: str) -> str | None:
    """Why ``secret`` (from ``endpoint.KEY``) cannot be the header secret, or None. The text
    never shows the secret."""
    if not secret.isprintable() or not secret.isascii():
        return (
            f"endpoint.{key}: the secret must be printable ASCII (an HTTP header value); "
            "e.g. a random GUID"
        )
    if len(secret) < MIN_ENDPOINT_SECRET:
        return (
            f"endpoint.{key}: the secret has {len(secret)} characters; use at least "
            f"{MIN_ENDPOINT_SECRET} random ones (e.g. a random GUID), since it is all that "
            "stands between any local process and a token"
        )
    return None
