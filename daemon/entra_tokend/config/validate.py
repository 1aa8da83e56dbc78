"""Pure validation, one function per table: values in, typed values and problem lines out.

Nothing here touches the filesystem or the user database (that is ``host``). Every problem is
one line naming the key (``token.NAME.scope``), flag or variable to fix, collected in
``Problems`` so that one run reports them all.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from entra_tokend.config.schema import (
    ACR_SCOPE,
    DEFAULT_IDENTITY,
    ENV_LISTEN,
    HOOK_KEYS,
    LOG_FORMATS,
    LOG_LEVELS,
    NAME_RE,
    POLICY_KEYS,
    TOKEN_KEYS,
    TOP_LEVEL,
    Types,
)
from entra_tokend.model import Hook, Policy, is_reserved_name

# Longest file name (one path component) Linux filesystems accept, in bytes.
NAME_MAX = 255


class Problems:
    """Collected problem lines, and (``check-config --offline``) the settings left to the pod.

    ``offline``: values only the pod supplies (``POD_SUPPLIED``) may be absent; each absent one
    is recorded in ``later`` as ``KEY (VARIABLE)`` instead of being a problem.
    """

    def __init__(self, *, offline: bool = False) -> None:
        self.lines: list[str] = []
        self.offline = offline
        self.later: list[str] = []

    def add(self, line: str) -> None:
        """Record one problem (one line)."""
        self.lines.append(line)


def suggest(key: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else ``""``."""
    import difflib  # noqa: PLC0415 - only for a mistyped key

    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(table: Mapping[str, Any], known: Sequence[str], where: str, p: Problems) -> None:
    """Report every key of ``table`` not in ``known``."""
    for key in table:
        if key not in known:
            p.add(f"{where}: unknown key '{key}'{suggest(key, known)}")


def type_name(t: Types) -> str:
    """'a string', 'an integer or a number', ... for messages."""
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if isinstance(t, tuple):
        return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in t))
    return names.get(t, t.__name__)


def typed(value: Any, t: Types) -> bool:
    """isinstance, except that a bool is never a number."""
    # bool is an int subclass; a `true` where a number belongs is a mistake.
    if isinstance(value, bool) and t is not bool:
        return False
    return isinstance(value, t)


def finite(value: Any) -> bool:
    """True for a finite number. TOML integers are unbounded and TOML has inf/nan; neither is
    a usable number of seconds."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def has_nul(value: Any, where: str, p: Problems) -> bool:
    """Report (and return True for) a string with a NUL: the OS would reject it mid-run."""
    if isinstance(value, str) and "\x00" in value:
        p.add(f"{where}: must not contain a NUL character")
        return True
    return False


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``host:port`` (``[v6]:port`` for IPv6). Raises ValueError with the reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9464 or [::]:9464")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "::", port  # no host: every address, IPv6 and IPv4 (listener.py)


def default_scope_for(scope: str) -> str | None:
    """The ``/.default`` scope of the resource ``scope`` names, or None when it names none.

    ``https://graph.microsoft.com/User.Read`` (a delegated permission) →
    ``https://graph.microsoft.com/.default``; a bare resource (``https://vault.azure.net``,
    ``api://APP-ID``) → itself + ``/.default``. The client-credentials flow takes only a
    resource's ``/.default`` scope (Microsoft identity platform documentation, "The /.default
    scope").
    """
    scheme, sep, rest = scope.partition("://")
    if not sep or not scheme or not rest.strip("/"):
        return None
    host, _, path = rest.partition("/")
    parts = [part for part in path.split("/") if part]
    # The last path segment of a non-default scope is the permission's name.
    resource = "/".join([host, *parts[:-1]])
    return f"{scheme}://{resource}/.default" if host else None


def check_scope(scope: str) -> str | None:
    """Return why ``scope`` is unusable for client credentials, or None when it is fine."""
    if not scope or any(c.isspace() for c in scope):
        return "must be exactly one scope with no spaces (one resource per token)"
    if not scope.endswith("/.default") or scope == "/.default":
        need = "client-credential flows need '<resource>/.default'"
        own = default_scope_for(scope)
        if own is not None:
            return f"{need} (did you mean '{own}'?)"
        return f"{need} (e.g. 'https://storage.azure.com/.default')"
    return None


def file_mode(value: Any, where: str, p: Problems) -> int:
    """Octal text ("0640") or an integer → mode bits; never world-writable, owner-readable."""
    mode = 0o640
    try:
        mode = int(value, 8) if isinstance(value, str) else int(value)
        if not 0 <= mode <= 0o777:
            raise ValueError
        if mode & 0o002:
            p.add(f"{where}: {value} would make tokens world-writable")
        elif not mode & 0o400:
            p.add(f"{where}: {value} leaves the owner unable to read the tokens")
    except ValueError:
        p.add(f"{where}: '{value}' is not an octal mode such as \"0640\"")
    return mode


def top_level(values: dict[str, Any], p: Problems) -> Policy:
    """Check the top-level numbers and names in place; returns the scheduler ``Policy``."""
    for key, (typ, default) in TOP_LEVEL.items():
        if isinstance(typ, tuple) and float in typ and not finite(values[key]):
            p.add(f"{key}: must be a finite number (got {values[key]!r})")
            values[key] = default
    if values["log_format"] not in LOG_FORMATS:
        p.add(f"log_format: '{values['log_format']}' must be one of {', '.join(LOG_FORMATS)}")
    values["log_level"] = str(values["log_level"]).lower()
    if values["log_level"] not in LOG_LEVELS:
        p.add(f"log_level: '{values['log_level']}' must be one of {', '.join(LOG_LEVELS)}")

    def number(key: str, ok: bool, rule: str) -> None:
        if not ok:
            p.add(f"{key}: {values[key]} {rule}")

    v = values
    number("refresh_at", 0.1 <= v["refresh_at"] <= 0.9, "must be between 0.1 and 0.9")
    number("jitter", 0 <= v["jitter"] <= 0.5, "must be between 0 and 0.5")
    if v["refresh_at"] * (1 + v["jitter"]) > 0.95:
        p.add("refresh_at, jitter: refresh_at × (1 + jitter) must stay at or below 0.95")
    number("min_refresh_interval", v["min_refresh_interval"] >= 0, "must be >= 0")
    number("backoff_initial", v["backoff_initial"] > 0, "must be > 0")
    number("backoff_max", v["backoff_max"] >= v["backoff_initial"], "must be >= backoff_initial")
    number(
        "config_error_backoff_max",
        v["config_error_backoff_max"] >= v["backoff_max"],
        "must be >= backoff_max",
    )
    number("request_timeout", v["request_timeout"] > 0, "must be > 0")
    number("concurrency", 1 <= v["concurrency"] <= 1024, "must be between 1 and 1024")
    number("poll_interval", v["poll_interval"] >= 1, "must be >= 1 second")
    number("once_deadline", v["once_deadline"] > 0, "must be > 0 (flag --deadline)")
    return Policy(**{key: float(v[key]) for key in POLICY_KEYS})


def listen(value: str, p: Problems) -> tuple[str, int] | None:
    """``host:port`` → (host, port); empty disables the listener."""
    if not value:
        return None
    try:
        return parse_listen(value)
    except ValueError as exc:
        p.add(f"listen: '{value}': {exc} (flag --listen, {ENV_LISTEN})")
        return None


def signal_number(value: Any) -> int | None:
    """A signal name (``HUP``, ``SIGHUP``) or number → its number; None if unknown."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:  # only named signals: the log and check-config print the name
            return int(signal.Signals(value)) if value > 0 else None
        except ValueError:
            return None
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None)
        return int(sig) if sig is not None else None
    return None


def hook(table: Any, where: str, base: Path, p: Problems) -> Hook | None:
    """A ``[hook]`` or ``[token.NAME.hook]`` table."""
    if not isinstance(table, dict):
        p.add(f"{where}: must be a table")
        return None
    check_keys(table, HOOK_KEYS, where, p)
    argv = table.get("exec", [])
    if not isinstance(argv, list) or not all(
        isinstance(a, str) and a and "\x00" not in a for a in argv
    ):
        p.add(f"{where}.exec: must be a list of non-empty strings (argv; no shell)")
        argv = []
    timeout = table.get("timeout", 10.0)
    if not typed(timeout, (int, float)) or not finite(timeout) or timeout <= 0:
        p.add(f"{where}.timeout: must be a positive number of seconds")
        timeout = 10.0
    pid_file = table.get("pid_file")
    if pid_file is not None and not (isinstance(pid_file, str) and pid_file):
        p.add(f"{where}.pid_file: must be a path string")
        pid_file = None
    elif has_nul(pid_file, f"{where}.pid_file", p):
        pid_file = None
    sig = signal_number(table.get("signal", "HUP"))
    if sig is None:
        p.add(f"{where}.signal: '{table.get('signal')}' is not a signal name or number")
        sig = int(signal.SIGHUP)
    if not argv and pid_file is None:
        p.add(f"{where}: needs `exec` or `pid_file`")
    return Hook(
        exec=tuple(argv),
        timeout=float(timeout),
        pid_file=base / pid_file if pid_file else None,
        signal=sig,
    )


def token_path(rel: Any, name: str, output_dir: Path, where: str, p: Problems) -> Path:
    """A token's ``path`` (relative to output_dir) → its absolute, normalised path."""
    if not isinstance(rel, str) or not rel:
        p.add(f"{where}.path: must be a non-empty string")
        rel = name
    elif has_nul(rel, f"{where}.path", p):
        rel = name
    target = Path(os.path.normpath(output_dir / rel))
    too_long = [part for part in Path(rel).parts if len(os.fsencode(part)) > NAME_MAX]
    if too_long:
        p.add(f"{where}.path: a path component is longer than {NAME_MAX} bytes")
    elif (
        Path(rel).is_absolute()
        or not target.is_relative_to(output_dir)
        or target == output_dir
        or rel.endswith("/")
    ):
        p.add(f"{where}.path: '{rel}' must be a file name inside output_dir")
    elif any(is_reserved_name(part) for part in target.relative_to(output_dir).parts):
        p.add(
            f"{where}.path: '{rel}' uses a name entra-tokend keeps for itself (its lock, temp "
            "files or state directory)"
        )
    return target


def token_table(name: str, table: Any, p: Problems) -> tuple[str, str] | None:
    """Check a ``[token.NAME]`` table's name, keys and scope; returns (scope, identity name)."""
    where = f"token.{name}"
    if not NAME_RE.match(name):
        p.add(f"{where}: name must be letters, digits, '.', '_' or '-' (it names files)")
        return None
    if not isinstance(table, dict):
        p.add(f"{where}: must be a table")
        return None
    check_keys(table, TOKEN_KEYS, where, p)
    scope = table.get("scope", ACR_SCOPE if "registry" in table else None)
    if scope is None:
        p.add(f"{where}.scope: is required (e.g. 'https://storage.azure.com/.default')")
        return None
    if not isinstance(scope, str):
        p.add(f"{where}.scope: must be a string")
        return None
    why = check_scope(scope)
    if why:
        p.add(f"{where}.scope: '{scope}' {why}")
    ident = table.get("identity", DEFAULT_IDENTITY)
    if not isinstance(ident, str):
        p.add(f"{where}.identity: must be a string")
        ident = DEFAULT_IDENTITY
    return scope, ident
