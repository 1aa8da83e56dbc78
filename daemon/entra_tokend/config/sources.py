"""Where settings come from, and which wins: flags > environment > TOML file > defaults.

``gather`` reads the TOML file (if any) and layers the environment and flags over it, returning
raw, not yet validated values. Type problems found on the way are added to ``Problems``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entra_tokend.config.schema import (
    ENV_CONFIG,
    ENV_LISTEN,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    ENV_OUTPUT_DIR,
    ENV_TOKENS,
    TABLES,
    TOP_LEVEL,
    ConfigError,
    Overrides,
)
from entra_tokend.config.validate import Problems, check_keys, type_name, typed
from entra_tokend.util.files import FileTooLarge, NotRegularFile, read_regular


@dataclass
class Raw:
    """Settings after precedence, before validation."""

    source: Path | None
    base: Path  # relative paths in the file (ca_file, pid_file) are relative to this
    where: str  # the file's name for messages ("config" without a file)
    values: dict[str, Any]
    identities: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    hook: Any = None
    has_hook: bool = False
    endpoint: Any = None
    files: dict[str, Any] = field(default_factory=dict)


MAX_CONFIG_BYTES = 1024 * 1024
"""The largest config file read (bytes)."""


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file. Raises ConfigError naming the file (and line, for syntax)."""
    import tomllib  # noqa: PLC0415 - only when a config file is given

    try:
        # Non-blocking and bounded: a FIFO or /dev/zero swapped in before a SIGHUP must be a
        # config error, not a frozen or exhausted daemon.
        text = read_regular(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileTooLarge:
        raise ConfigError([f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes"]) from None
    except NotRegularFile:
        raise ConfigError([f"config file {path}: not a regular file"]) from None
    except FileNotFoundError:
        raise ConfigError([f"config file {path}: does not exist"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"config file {path}: cannot be read: {reason}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        hint = _leading_zero_hint(text, str(exc))
        raise ConfigError([f"config file {path}: invalid TOML: {exc}{hint}"]) from None
    except RecursionError:
        # tomllib recurses per nesting level; thousands of levels are no configuration.
        raise ConfigError([f"config file {path}: invalid TOML: nested too deeply"]) from None


_POSITION_RE = re.compile(r"\(at line (\d+), column \d+\)")
_LEADING_ZERO_RE = re.compile(r"^\s*([A-Za-z0-9_.\"-]+)\s*=\s*(0[0-7]+)\s*(#.*)?$")


def _leading_zero_hint(text: str, message: str) -> str:
    """A hint for ``file_mode = 0640``: TOML forbids leading zeros in integers (TOML 1.0,
    "Integer"), and tomllib's message only gives the position."""
    position = _POSITION_RE.search(message)
    lines = text.splitlines()
    if position is None or not 0 < int(position[1]) <= len(lines):
        return ""
    match = _LEADING_ZERO_RE.match(lines[int(position[1]) - 1])
    if match is None:
        return ""
    key, digits = match[1], match[2]
    return (
        f" — TOML integers cannot start with 0; write the mode as a string: "
        f'{key} = "{digits}" (or 0o{digits.lstrip("0") or "0"})'
    )


def parse_token_shorthand(items: Sequence[str], where: str, p: Problems) -> dict[str, str]:
    """``NAME=SCOPE`` items (``--token``, ``ENTRA_TOKEND_TOKENS``) as {name: scope}."""
    tokens: dict[str, str] = {}
    for item in items:
        name, sep, scope = item.strip().partition("=")
        if not sep or not name.strip() or not scope.strip():
            p.add(f"{where}: '{item}' is not NAME=SCOPE")
            continue
        tokens[name.strip()] = scope.strip()
    return tokens


def _top_level(
    data: Mapping[str, Any], overrides: Overrides, env: Mapping[str, str], p: Problems
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, (typ, default) in TOP_LEVEL.items():
        value = data.get(key, default)
        if value is not None and not typed(value, typ):
            p.add(f"{key}: must be {type_name(typ)} (got {value!r})")
            value = default
        values[key] = value
    for key, var, flag in (
        ("output_dir", ENV_OUTPUT_DIR, overrides.output_dir),
        ("listen", ENV_LISTEN, overrides.listen),
        ("log_format", ENV_LOG_FORMAT, overrides.log_format),
        ("log_level", ENV_LOG_LEVEL, overrides.log_level),
    ):
        if flag is not None:
            values[key] = flag
        elif var in env:
            values[key] = env[var]
    if overrides.once_deadline is not None:
        values["once_deadline"] = overrides.once_deadline
    return values


def _table(data: Mapping[str, Any], name: str, where: str, p: Problems) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        p.add(f"{where}: '{name}' must be a table of [{name}.NAME] tables")
        return {}
    return dict(table)


def gather(overrides: Overrides, env: Mapping[str, str], p: Problems) -> Raw:
    """Apply precedence. Raises ConfigError only when the file itself cannot be read."""
    path_text = overrides.config or env.get(ENV_CONFIG) or None
    source = Path(path_text) if path_text else None
    data: dict[str, Any] = read_toml(source) if source else {}
    where = str(source) if source else "config"
    check_keys(data, [*TOP_LEVEL, *TABLES], where, p)
    tokens = _table(data, "token", where, p)
    shorthand = {
        **parse_token_shorthand(
            [t for t in env.get(ENV_TOKENS, "").split(",") if t.strip()], ENV_TOKENS, p
        ),
        **parse_token_shorthand(overrides.tokens, "--token", p),
    }
    for name, scope in shorthand.items():
        existing = tokens.get(name, {})
        # A non-table [token.NAME] stays as it is, to be reported as "must be a table".
        tokens[name] = {**existing, "scope": scope} if isinstance(existing, dict) else existing
    return Raw(
        source=source,
        base=source.parent.absolute() if source else Path.cwd(),
        where=where,
        values=_top_level(data, overrides, env, p),
        identities=_table(data, "identity", where, p),
        tokens=tokens,
        hook=data.get("hook"),
        has_hook="hook" in data,
        endpoint=data.get("endpoint"),
        files=_table(data, "file", where, p),
    )
