"""Configuration: typed, frozen, validated up front — and pure.

Precedence is flags > environment > TOML file > defaults (``sources``). ``load_config`` reads
only the sources it is given (the TOML file, the ``env`` mapping, the flags) and gathers every
problem the pure rules per table (``validate``, ``validate_identity``, ``validate_outputs``,
``validate_endpoint``) find into one ``ConfigError``, each line naming the key or variable to
fix, so an operator fixes a config in one round trip. What only the host can answer (user and
group names, ``template_file`` and ``secret_file`` contents, CA files, output_dir) is listed in
``Config.host`` for the host checks (``entra_tokend.preflight``), which ``run`` and
``check-config`` apply and ``check-config --offline`` skips. ``schema`` holds every key with
its unit and default; ``render`` prints the effective configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entra_tokend.config import (
    validate,
    validate_endpoint,
    validate_files,
    validate_identity,
    validate_outputs,
)
from entra_tokend.config.render import render_config
from entra_tokend.config.schema import (
    DEFAULT_IDENTITY,
    NAME_RE,
    TOP_LEVEL,
    Config,
    ConfigError,
    HostLookups,
    Overrides,
    OwnerLookup,
)
from entra_tokend.config.sources import Raw, gather, read_toml
from entra_tokend.config.validate import Problems, check_scope, parse_listen
from entra_tokend.model import EndpointSpec, Hook, Identity, OutputSpec, TokenSpec
from entra_tokend.util.formats import FORMAT_NAMES
from entra_tokend.util.net import is_loopback_host

__all__ = [
    "TOP_LEVEL",
    "Config",
    "ConfigError",
    "HostLookups",
    "Overrides",
    "OwnerLookup",
    "check_scope",
    "is_loopback_host",
    "load_config",
    "parse_listen",
    "read_toml",
    "render_config",
]


@dataclass
class _Lookups:
    """``HostLookups`` while they are collected."""

    owners: list[OwnerLookup] = field(default_factory=list)
    templates: list[tuple[str, Path]] = field(default_factory=list)
    ca_files: list[tuple[str, Path]] = field(default_factory=list)
    token_proxy_ca_files: list[tuple[str, Path]] = field(default_factory=list)
    secret_file: Path | None = None
    own: set[str] = field(default_factory=set)  # token.NAME.file_owner keys set per token
    file_templates: list[tuple[str, Path]] = field(default_factory=list)

    def owner(self, value: Any, where: str, p: Problems, *, group: bool) -> int | None:
        """A ``file_owner``/``file_group`` value: an integer is an id, checked here; a name
        (even one of digits: chown(1) tries the name first) is left to the host checks."""
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            # 2**32 - 1 is (uid_t)-1, which chown reads as "leave unchanged".
            if 0 <= value < 2**32 - 1:
                return value
            p.add(f"{where}: {value} is not a valid {'group' if group else 'user'} id")
            return None
        if not validate.has_nul(value, where, p):
            self.owners.append(OwnerLookup(where, str(value), group, ()))
        return None

    def frozen(
        self, output_dir: Path, tokens: Mapping[str, TokenSpec], files: Mapping[str, Any]
    ) -> HostLookups:
        # A top-level owner applies to every token (and [file.NAME]) that does not set its own.
        owners = []
        for found in self.owners:
            users: tuple[str, ...]
            if found.key.startswith("token."):
                users = (found.key.split(".")[1],)
            elif found.key.startswith("file."):
                users = (f"file:{found.key.removeprefix('file.').rpartition('.')[0]}",)
            else:
                users = tuple(n for n in tokens if f"token.{n}.{found.key}" not in self.own)
                users += tuple(
                    f"file:{n}" for n in files if f"file.{n}.{found.key}" not in self.own
                )
            owners.append(OwnerLookup(found.key, found.value, found.group, users))
        return HostLookups(
            output_dir=output_dir,
            owners=tuple(owners),
            templates=tuple(self.templates),
            secret_file=self.secret_file,
            ca_files=tuple(self.ca_files),
            token_proxy_ca_files=tuple(self.token_proxy_ca_files),
            file_templates=tuple(self.file_templates),
        )


def _tokens(
    raw: Raw, output_dir: Path, defaults: OutputSpec, look: _Lookups, p: Problems
) -> dict[str, TokenSpec]:
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
        fmt = table.get("format", FORMAT_NAMES[0])
        if not isinstance(fmt, str) or fmt not in FORMAT_NAMES:
            p.add(f"{where}.format: '{fmt}' must be one of {', '.join(FORMAT_NAMES)}")
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
            name,
            table,
            fmt=str(fmt),
            target=target,
            defaults=defaults,
            base=raw.base,
            look=look,
            p=p,
        )
        tokens[name] = TokenSpec(
            name=name, scope=scope, identity=identity, output=output, hook=hook
        )
    return tokens


def _endpoint(raw: Raw, env: Mapping[str, str], look: _Lookups, p: Problems) -> EndpointSpec | None:
    if raw.endpoint is None:
        return None
    checked = validate_endpoint.endpoint(raw.endpoint, env, raw.base, p)
    if checked is None:
        return None
    address, grants, idle, env_secret, file_path = checked
    if file_path is not None:
        look.secret_file = file_path
        secret = ""  # read by the host checks (preflight.resolve)
        source = f"secret_file = {file_path}"
    elif env_secret is None:  # reported; the grants are still checked (every problem at once)
        if not p.lines:  # never an endpoint without a secret
            p.add("endpoint: set secret_file or secret_env")
        secret, source = "", f"secret_env = {raw.endpoint.get('secret_env')}"
    else:
        secret = env_secret
        source = f"secret_env = {raw.endpoint.get('secret_env')}"
        why = validate_endpoint.secret_problem(secret, "secret_env") if secret else None
        if why:
            p.add(why)  # no early return: the grants are still checked
    return EndpointSpec(
        listen=address,
        secret=secret,
        secret_source=source,
        grants=grants,
        idle_timeout=idle,
        imds=validate_endpoint.endpoint_imds(raw.endpoint, p),
    )


def _output(
    name: str,
    table: dict[str, Any],
    *,
    fmt: str,
    target: Path,
    defaults: OutputSpec,
    base: Path,
    look: _Lookups,
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
            look.own.add(f"{where}.{key}")
            found = look.owner(table[key], f"{where}.{key}", p, group=key == "file_group")
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
            path = validate_outputs.template_path(
                table["template_file"], base, f"{where}.template_file", p
            )
            if path is not None:
                look.templates.append((name, path))
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
    *,
    endpoint: EndpointSpec | None,
    look: _Lookups,
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
        ident = validate_identity.identity(name, table, env, raw.base, p)
        if ident is None:
            continue
        selectors = validate_endpoint.identity_selectors(table, where, p)
        ident = dataclasses.replace(
            ident, object_id=selectors.get("object_id"), resource_id=selectors.get("resource_id")
        )
        identities[name] = ident
        if ident.ca_file is not None:
            look.ca_files.append((f"{where}.ca_file", ident.ca_file))
        if ident.token_proxy_ca_file is not None:
            var = " (AZURE_KUBERNETES_CA_FILE)" if name == DEFAULT_IDENTITY else ""
            key = f"{where}.token_proxy_ca_file{var}"
            look.token_proxy_ca_files.append((key, ident.token_proxy_ca_file))
    validate_endpoint.unique_selectors(identities, p, endpoint=raw.endpoint is not None)
    return identities


def load_config(overrides: Overrides, env: Mapping[str, str], *, offline: bool = False) -> Config:
    """Build and validate the configuration from flags, ``env`` and the TOML file. Pure: it
    reads the TOML file named by ``overrides``/``env`` and nothing else.

    ``offline`` (``check-config --offline``): ``env`` is not the pod's, so values only the pod
    supplies (the default identity's AZURE_TENANT_ID, AZURE_CLIENT_ID,
    AZURE_FEDERATED_TOKEN_FILE; an endpoint ``secret_env`` variable) may be absent: they are
    listed in ``Config.run_time`` with empty placeholders, and such a Config is never run.
    The result lists in ``Config.host`` what the host checks (``entra_tokend.preflight``)
    must look up before it runs. Raises ConfigError listing every problem (one line each),
    carrying the host lookups found so far.
    """
    p = Problems(offline=offline)
    look = _Lookups()
    raw = gather(overrides, env, p)
    values = raw.values
    mode = validate.file_mode(values["file_mode"], "file_mode", p)
    listen = validate.listen(values["listen"], p)
    policy = validate.top_level(values, p)
    output_dir = Path(values["output_dir"]).absolute()
    validate.has_nul(str(output_dir), "output_dir", p)
    defaults = OutputSpec(
        path=output_dir,
        file_mode=mode,
        file_owner=look.owner(values["file_owner"], "file_owner", p, group=False),
        file_group=look.owner(values["file_group"], "file_group", p, group=True),
    )
    tokens = _tokens(raw, output_dir, defaults, look, p)
    files = validate_files.files(raw.files, tokens, defaults, base=raw.base, look=look, p=p)
    endpoint = _endpoint(raw, env, look, p)
    identities = _identities(raw, tokens, env, p, endpoint=endpoint, look=look)
    lookups = look.frozen(output_dir, tokens, raw.files)
    if p.lines:
        raise ConfigError(p.lines, lookups)
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
        host=lookups,
        run_time=tuple(p.later),
        files=files,
    )
