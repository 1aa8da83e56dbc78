"""The effective configuration as TOML, for ``check-config`` (it holds no secrets: tenant and
client ids are identifiers, not credentials)."""

from __future__ import annotations

import json
import signal
from typing import Any

from entra_tokend.config.schema import IDENTITY_KEYS, POLICY_KEYS, TOP_LEVEL, Config
from entra_tokend.model import OutputSpec


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a TOML basic string (control characters escaped, e.g. a template's
    # newlines).
    return json.dumps(str(value), ensure_ascii=False)


def _output_lines(config: Config, out: OutputSpec) -> list[str]:
    """A token's file settings where they differ from the top level, and its format's."""
    lines = []
    if out.file_mode != config.file_mode:
        lines.append(f'file_mode = "{out.file_mode:04o}"')
    if out.file_owner != config.file_owner and out.file_owner is not None:
        lines.append(f"file_owner = {out.file_owner}")
    if out.file_group != config.file_group and out.file_group is not None:
        lines.append(f"file_group = {out.file_group}")
    if out.format == "env":
        lines.append(f"env_name = {_toml_value(out.env_name)}")
        lines.append(f"env_expires_name = {_toml_value(out.env_expires_name)}")
    if out.format == "template" and out.template is not None:
        lines.append(f"template = {_toml_value(out.template)}")
    if out.registries:
        lines.append(f"registry = {_toml_value(list(out.registries))}")
    return lines


def render_config(config: Config) -> str:
    """The effective configuration as TOML text that ``load_config`` accepts again."""
    lines = [f"# effective configuration{f' (from {config.source})' if config.source else ''}"]
    top: dict[str, Any] = {
        "output_dir": str(config.output_dir),
        "listen": f"{config.listen[0]}:{config.listen[1]}" if config.listen else "",
        "file_mode": f"{config.file_mode:04o}",
    }
    for key in TOP_LEVEL:
        if key not in top:
            holder: Any = config.policy if key in POLICY_KEYS else config
            value = getattr(holder, key)
            if value is not None:
                top[key] = value
    lines += [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for ident in config.identities.values():
        lines += ["", f"[identity.{ident.name}]"]
        for key in IDENTITY_KEYS:
            value = getattr(ident, key)
            if value is not None:
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
    if config.endpoint is not None:
        ep = config.endpoint
        host, port = ep.listen
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        allow = ", ".join(
            f"{{resource = {_toml_value(g.resource)}, identity = {_toml_value(g.identity)}}}"
            for g in ep.grants
        )
        name, _, value = ep.secret_source.partition(" = ")
        lines += [
            "",
            "[endpoint]  # the secret itself is never printed",
            f"listen = {_toml_value(listen)}",
            f"{name} = {_toml_value(value)}",
            f"allow = [{allow}]",
            f"idle_timeout = {ep.idle_timeout!r}",
        ]
    return "\n".join(lines) + "\n"
