"""The effective configuration as TOML, for ``check-config`` (it holds no secrets: tenant and
client ids are identifiers, not credentials)."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entra_tokend.config.schema import IDENTITY_KEYS, POLICY_KEYS, TOP_LEVEL, Config
from entra_tokend.model import EndpointSpec, Hook, Identity, OutputSpec
from entra_tokend.util.net import address_text

DEFAULT_TRUST = "default trust store"
"""The trust of an identity without a CA setting, when the host's variables are unknown."""


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped (PEM text has
    newlines)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def exchange_mode(ident: Identity, default_trust: str = DEFAULT_TRUST) -> str:
    """One line saying where ``ident``'s token requests go and whom they trust
    (``default_trust`` words the trust without a CA setting)."""
    if ident.token_proxy is None:
        trust = f"trusting {ident.ca_file}" if ident.ca_file else default_trust
        return f"direct to {ident.authority_host} ({trust})"
    name = ident.token_proxy_sni_name or "the URL's host"
    if ident.token_proxy_ca_file is not None:
        trust = f"trusting only {ident.token_proxy_ca_file}, re-read when it changes"
    elif ident.token_proxy_ca_data is not None:
        trust = "trusting only token_proxy_ca_data"
    else:
        trust = default_trust
    return (
        f"through the identity-binding token proxy {ident.token_proxy} "
        f"(TLS server name {name}; {trust})"
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _pending(config: Config, key: str) -> list[str]:
    """``key = "VALUE"`` for a setting the host checks have not resolved yet (offline)."""
    if config.host is None:
        return []
    lines = [
        f"{o.key.rpartition('.')[2]} = {_toml_value(o.value)}"
        for o in config.host.owners
        if o.key == key
    ]
    name = key.removeprefix("token.").removesuffix(".template_file")
    lines += [
        f"template_file = {_toml_value(str(path))}"
        for token, path in config.host.templates
        if key.endswith(".template_file") and token == name
    ]
    return lines


def _template_path(config: Config, where: str) -> Path | None:
    """The ``template_file`` a resolved template was read from (its text is not printed)."""
    if config.host is None:
        return None
    return next((path for key, path in config.host.template_paths if key == where), None)


def _output_lines(config: Config, out: OutputSpec) -> list[str]:
    """A token's file settings where they differ from the top level, and its format's."""
    where = f"token.{out.name}"
    lines = _pending(config, f"{where}.file_owner") + _pending(config, f"{where}.file_group")
    if out.file_mode != config.file_mode:
        lines.append(f'file_mode = "{out.file_mode:04o}"')
    if out.file_owner != config.file_owner and out.file_owner is not None:
        lines.append(f"file_owner = {out.file_owner}")
    if out.file_group != config.file_group and out.file_group is not None:
        lines.append(f"file_group = {out.file_group}")
    if out.format == "env":
        lines.append(f"env_name = {_toml_value(out.env_name)}")
        lines.append(f"env_expires_name = {_toml_value(out.env_expires_name)}")
    read_from = _template_path(config, where)
    if out.format == "template" and read_from is not None:
        lines.append(f"template_file = {_toml_value(str(read_from))}")
    elif out.format == "template" and out.template is not None:
        lines.append(f"template = {_toml_value(out.template)}")
    elif out.format == "template":
        lines += _pending(config, f"{where}.template_file")
    if out.registries:
        lines.append(f"registry = {_toml_value(list(out.registries))}")
    return lines


def _file_lines(config: Config) -> list[str]:
    """The ``[file.NAME]`` tables (files rendered from several tokens); offline, a
    ``template_file`` and user or group names as given."""
    lines: list[str] = []
    for spec in config.files.values():
        where = f"file.{spec.name}"
        lines += ["", f"[{where}]"]
        lines.append(f"path = {_toml_value(str(spec.path.relative_to(config.output_dir)))}")
        if spec.tokens:
            lines.append(f"tokens = {_toml_value(list(spec.tokens))}")
        read_from = _template_path(config, where)
        if read_from is not None:
            lines.append(f"template_file = {_toml_value(str(read_from))}")
        elif spec.template:
            lines.append(f"template = {_toml_value(spec.template)}")
        elif config.host is not None:
            lines += [
                f"template_file = {_toml_value(str(path))}"
                for name, path in config.host.file_templates
                if name == spec.name
            ]
        lines += _pending(config, f"{where}.file_owner") + _pending(config, f"{where}.file_group")
        if spec.file_mode != config.file_mode:
            lines.append(f'file_mode = "{spec.file_mode:04o}"')
        for key, value, default in (
            ("file_owner", spec.file_owner, config.file_owner),
            ("file_group", spec.file_group, config.file_group),
        ):
            if value != default and value is not None:
                lines.append(f"{key} = {value}")
        if spec.hook:
            lines += [f"[{where}.hook]", *_hook_lines(spec.hook)]
    return lines


def _hook_lines(hook: Hook) -> list[str]:
    lines = [f"exec = {_toml_value(list(hook.exec))}"] if hook.exec else []
    lines.append(f"timeout = {hook.timeout!r}")
    if hook.pid_file:
        lines.append(f"pid_file = {_toml_value(str(hook.pid_file))}")
    lines.append(f"signal = {_toml_value(signal.Signals(hook.signal).name)}")
    return lines


def _comment(text: str) -> str:
    # Printable characters only: a comment ends at a newline (a path may hold one).
    return "".join(c if c.isprintable() else "?" for c in text)


def render_config(
    config: Config,
    notes: Sequence[str] = (),
    *,
    offline: bool = False,
    default_trust: str = DEFAULT_TRUST,
) -> str:
    """The effective configuration as TOML text that ``load_config`` accepts again.

    ``notes`` (what the host checks found: output_dir, listeners, projected tokens) become
    comments at the top; ``offline`` says they were not made, and names the settings only the
    pod supplies (``Config.run_time``), which stay commented out. ``default_trust`` words
    the trust of identities without a CA setting (the host checks' ``default_trust``).
    """
    lines = [f"# effective configuration{f' (from {config.source})' if config.source else ''}"]
    if offline:
        lines.append("# offline: output_dir, listen, projected tokens and CA files not checked")
        lines.append("#   (nor users, groups, template_file or secret_file)")
        lines += [f"# supplied at run time: {_comment(key)}" for key in config.run_time]
    elif notes:
        lines.append("# host checks:")
        lines += [f"#   {_comment(note)}" for note in notes]
    top: dict[str, Any] = {
        "output_dir": str(config.output_dir),
        "listen": address_text(*config.listen) if config.listen else "",
        "file_mode": f"{config.file_mode:04o}",
    }
    for key in TOP_LEVEL:
        if key not in top:
            holder: Any = config.policy if key in POLICY_KEYS else config
            value = getattr(holder, key)
            if value is not None:
                top[key] = value
    lines += [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    lines += _pending(config, "file_owner") + _pending(config, "file_group")
    for ident in config.identities.values():
        mode = _comment(exchange_mode(ident, default_trust))
        lines += ["", f"[identity.{ident.name}]", f"# token requests: {mode}"]
        for key in IDENTITY_KEYS:
            value = getattr(ident, key)
            later = [k for k in config.run_time if k.startswith(f"identity.{ident.name}.{key} ")]
            if later:
                lines.append(f"#{key} = ...  # supplied at run time {later[0].partition(' ')[2]}")
            elif value is not None:
                lines.append(f"{key} = {_toml_value(str(value))}")
    for tok in config.tokens.values():
        lines += [
            "",
            f"[token.{tok.name}]",
            f"scope = {_toml_value(tok.scope)}",
            f"identity = {_toml_value(tok.identity)}",
            f"path = {_toml_value(str(tok.path.relative_to(config.output_dir)))}",
            f"format = {_toml_value(tok.output.format)}",
        ]
        lines += _output_lines(config, tok.output)
        if tok.hook:
            lines.append(f"[token.{tok.name}.hook]")
            if tok.hook.exec:
                lines.append(f"exec = {_toml_value(list(tok.hook.exec))}")
            lines.append(f"timeout = {tok.hook.timeout!r}")
            if tok.hook.pid_file:
                lines.append(f"pid_file = {_toml_value(str(tok.hook.pid_file))}")
            lines.append(f"signal = {_toml_value(signal.Signals(tok.hook.signal).name)}")
    lines += _file_lines(config)
    if config.endpoint is not None:
        lines += _endpoint_lines(config.endpoint)
    return "\n".join(lines) + "\n"


def _endpoint_lines(ep: EndpointSpec) -> list[str]:
    """The ``[endpoint]`` table (naming where the secret comes from, never the secret)."""
    host, port = ep.listen
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    allow = ", ".join(
        f"{{resource = {_toml_value(g.resource)}, identity = {_toml_value(g.identity)}}}"
        for g in ep.grants
    )
    name, _, value = ep.secret_source.partition(" = ")
    return [
        "",
        "[endpoint]  # the secret itself is never printed",
        f"listen = {_toml_value(listen)}",
        f"{name} = {_toml_value(value)}",
        f"allow = [{allow}]",
        f"idle_timeout = {ep.idle_timeout!r}",
        f"imds = {'true' if ep.imds else 'false'}",
    ]
