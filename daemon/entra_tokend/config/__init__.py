"""Configuration: typed, frozen, validated up front.

Precedence is flags > environment > TOML file > defaults (``sources``). ``load_config`` gathers
every problem it can find — pure rules per table (``validate``), then host checks (``host``) —
and raises one ``ConfigError`` listing them all, each naming the key or variable to fix, so an
operator fixes a config in one round trip. ``schema`` holds every key with its unit and default;
``render`` prints the effective configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entra_tokend.config import (
    host,
    validate,
    validate_endpoint,
    validate_files,
    validate_outputs,
)
from entra_tokend.config.render import render_config
from entra_tokend.config.schema import (
    DEFAULT_IDENTITY,
    NAME_RE,
    TOP_LEVEL,
    Config,
    ConfigError,
    Overrides,
)
from entra_tokend.config.sources import Raw, gather, read_toml
from entra_tokend.config.validate import (
    Problems,
    check_scope,
    parse_listen,
)
from entra_tokend.exchange.proxy import is_loopback_host
from entra_tokend.model import EndpointSpec, Hook, Identity, OutputSpec, TokenSpec
from entra_tokend.outputs import FORMATS

__all__ = [
    "TOP_LEVEL",
    "Config",
    "ConfigError",
    "Overrides",
    "check_scope",
    "is_loopback_host",
    "load_config",
    "parse_listen",
    "read_toml",
    "render_config",
]


def _tokens(raw: Raw, output_dir: Path, defaults: OutputSpec, p: Problems) -> dict[str, TokenSpec]:
    global_hook = validate.hook(raw.hook, "hook", raw.base, p) if raw.has_hook else None
    tokens: dict[str, TokenSpec] = {}
    paths: dict[Path, str] = {}
    if not raw.tokens and raw.endpoint is None:
        p.add(
            "no tokens configured: add a [token.NAME] table with a scope, "
            "--token NAME=SCOPE, or ENTRA_TOKEND_TOKENS=NAME=SCOPE"
        )
    for name, table in raw.tokens.items():
        checked = validate.token_table(name, table, p)
        if checked is None:
            continue
        scope, identity = checked
        where = f"token.{name}"
        fmt = table.get("format", "raw")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            p.add(f"{where}.format: '{fmt}' must be one of {', '.join(FORMATS)}")
        validate_outputs.format_keys(table, str(fmt), where, p)
        target = validate.token_path(table.get("path", name), name, output_dir, where, p)
        if target in paths:
            p.add(f"{where}.path: token.{paths[target]} already writes to {target}")
        paths[target] = name
        hook: Hook | None = (
            validate.hook(table["hook"], f"{where}.hook", raw.base, p)
            if "hook" in table
            else global_hook
        )
        output = _output(
            name, table, fmt=str(fmt), target=target, defaults=defaults, base=raw.base, p=p
        )
        tokens[name] = TokenSpec(
            name=name, scope=scope, identity=identity, output=output, hook=hook
        )
    return tokens


MIN_ENDPOINT_SECRET = 16
"""Characters: an X-IDENTITY-HEADER secret shorter than this is refused (Azure's is a GUID)."""


def _endpoint(raw: Raw, env: Mapping[str, str], p: Problems) -> EndpointSpec | None:
    if raw.endpoint is None:
        return None
    checked = validate_endpoint.endpoint(raw.endpoint, env, raw.base, p)
    if checked is None:
        return None
    address, grants, idle, env_secret, file_path = checked
    if file_path is not None:
        secret = host.secret_file(file_path, "endpoint.secret_file", p)
        source = f"secret_file = {file_path}"
    else:
        secret = env_secret
        source = f"secret_env = {raw.endpoint.get('secret_env')}"
    if secret is None:
        return None
    if not secret.isprintable() or not secret.isascii():
        key = source.partition(" = ")[0]
        p.add(
            f"endpoint.{key}: the secret must be printable ASCII (an HTTP header value); "
            "e.g. a random GUID"
        )
    elif len(secret) < MIN_ENDPOINT_SECRET:
        key = source.partition(" = ")[0]
        p.add(
            f"endpoint.{key}: the secret has {len(secret)} characters; use at least "
            f"{MIN_ENDPOINT_SECRET} random ones (e.g. a random GUID), since it is all that "
            "stands between any local process and a token"
        )  # no early return: the grants are still checked, so every problem is reported
    return EndpointSpec(
        listen=address, secret=secret, secret_source=source, grants=grants, idle_timeout=idle
    )


def _output(
    name: str,
    table: dict[str, Any],
    *,
    fmt: str,
    target: Path,
    defaults: OutputSpec,
    base: Path,
    p: Problems,
) -> OutputSpec:
    """A token's ``OutputSpec``: its path and format, the file settings (per token, else the
    top-level ones) and the format's own settings."""
    where = f"token.{name}"
    mode = defaults.file_mode
    owner, group = defaults.file_owner, defaults.file_group
    for key in ("file_mode", "file_owner", "file_group"):
        if key in table and not validate.typed(table[key], (str, int)):
            p.add(f"{where}.{key}: must be a string or an integer")
        elif key == "file_mode" and key in table:
            mode = validate.file_mode(table[key], f"{where}.{key}", p)
        elif key in table:
            found = host.owner(table[key], f"{where}.{key}", p, group=key == "file_group")
            owner, group = (found, group) if key == "file_owner" else (owner, found)
    env_name = validate_outputs.env_name(
        table.get("env_name"), "ACCESS_TOKEN", f"{where}.env_name", p
    )
    env_expires = validate_outputs.env_name(
        table.get("env_expires_name"),
        f"{env_name}_EXPIRES_ON",
        f"{where}.env_expires_name",
        p,
    )
    if fmt == "env" and env_name == env_expires:
        p.add(f"{where}.env_expires_name: must differ from env_name ('{env_name}')")
    text: str | None = None
    if fmt == "template":
        if ("template" in table) == ("template_file" in table):
            p.add(f'{where}.template: give exactly one of template = "..." or template_file')
        elif "template" in table:
            text = validate_outputs.template_text(table["template"], f"{where}.template", p)
        else:
            text = host.template_file(table["template_file"], base, f"{where}.template_file", p)
            if text is not None:
                text = validate_outputs.template_text(text, f"{where}.template_file", p)
    registries: tuple[str, ...] = ()
    if "registry" in table:
        registries = validate_outputs.registries(table["registry"], f"{where}.registry", p)
    return OutputSpec(
        path=target,
        format=fmt,
        file_mode=mode,
        file_owner=owner,
        file_group=group,
        name=name,
        env_name=env_name,
        env_expires_name=env_expires,
        template=text,
        registries=registries,
    )


def _identities(
    raw: Raw,
    tokens: Mapping[str, TokenSpec],
    env: Mapping[str, str],
    p: Problems,
    endpoint: EndpointSpec | None = None,
    *,
    host_checks: bool = True,
) -> dict[str, Identity]:
    identities: dict[str, Identity] = {}
    used = {spec.identity for spec in tokens.values()}
    if endpoint is not None:
        used |= {grant.identity for grant in endpoint.grants}
    for name in sorted(set(raw.identities) | used):
        table = raw.identities.get(name, {})
        where = f"identity.{name}"
        if not NAME_RE.match(name):
            p.add(f"{where}: name must be letters, digits, '.', '_' or '-'")
            continue
        if not isinstance(table, dict):
            p.add(f"{where}: must be a table")
            continue
        if name not in raw.identities and name != DEFAULT_IDENTITY:
            users = sorted(f"token.{t}" for t, s in tokens.items() if s.identity == name)
            users = users or ["endpoint.allow"]
            p.add(f"{users[0]}.identity: '{name}' is not defined (add [identity.{name}])")
            continue
        ident = validate.identity(name, table, env, raw.base, p)
        if ident is not None and host_checks:
            host.ca_file(ident.ca_file, f"{where}.ca_file", p)
            var = " (AZURE_KUBERNETES_CA_FILE)" if name == DEFAULT_IDENTITY else ""
            host.token_proxy_ca_file(
                ident.token_proxy_ca_file, f"{where}.token_proxy_ca_file{var}", p
            )
        if ident is not None:
            identities[name] = ident
    return identities


def load_config(
    overrides: Overrides, env: Mapping[str, str], *, host_checks: bool = True
) -> Config:
    """Build and validate the configuration from flags, ``env`` and the TOML file.

    ``host_checks=False`` (``check-config --offline``) leaves out what depends on the machine
    the daemon will run on: output_dir and the CA files (``ca_file``, ``token_proxy_ca_file``).
    Raises ConfigError listing every problem (one line each).
    """
    p = Problems()
    raw = gather(overrides, env, p)
    values = raw.values
    mode = validate.file_mode(values["file_mode"], "file_mode", p)
    listen = validate.listen(values["listen"], p)
    policy = validate.top_level(values, p)
    output_dir = Path(values["output_dir"]).absolute()
    defaults = OutputSpec(
        path=output_dir,
        file_mode=mode,
        file_owner=host.owner(values["file_owner"], "file_owner", p, group=False),
        file_group=host.owner(values["file_group"], "file_group", p, group=True),
    )
    tokens = _tokens(raw, output_dir, defaults, p)
    files = validate_files.files(raw.files, tokens, defaults, raw.base, p)
    endpoint = _endpoint(raw, env, p)
    identities = _identities(raw, tokens, env, p, endpoint, host_checks=host_checks)
    if host_checks:
        host.output_dir(output_dir, p)
    if p.lines:
        raise ConfigError(p.lines)
    return Config(
        output_dir=output_dir,
        listen=listen,
        file_mode=mode,
        log_format=values["log_format"],
        log_level=values["log_level"],
        policy=policy,
        request_timeout=float(values["request_timeout"]),
        concurrency=int(values["concurrency"]),
        poll_interval=float(values["poll_interval"]),
        once_deadline=float(values["once_deadline"]),
        allow_world_writable=bool(values["allow_world_writable"]),
        file_owner=defaults.file_owner,
        file_group=defaults.file_group,
        identities=identities,
        tokens=tokens,
        source=raw.source,
        endpoint=endpoint,
        files=files,
    )
