"""Configuration: typed, frozen, validated up front.

Precedence is flags > environment > TOML file > defaults. ``load_config`` gathers every problem
it can find and raises one ``ConfigError`` listing them all, each naming the key or variable to
fix, so an operator fixes a config in one round trip rather than one error per restart.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import os
import pwd
import re
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from entra_tokend.lock import LOCK_NAME
from entra_tokend.sink import is_temp_name

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_IDENTITY = "default"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
FORMATS = ("raw", "json")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")

ENV_CONFIG = "ENTRA_TOKEND_CONFIG"
ENV_TOKENS = "ENTRA_TOKEND_TOKENS"
ENV_OUTPUT_DIR = "ENTRA_TOKEND_OUTPUT_DIR"
ENV_LISTEN = "ENTRA_TOKEND_LISTEN"
ENV_LOG_FORMAT = "ENTRA_TOKEND_LOG_FORMAT"
ENV_LOG_LEVEL = "ENTRA_TOKEND_LOG_LEVEL"

# Identity keys and the webhook-injected variable that supplies each for the default identity.
IDENTITY_ENV = {
    "tenant_id": "AZURE_TENANT_ID",
    "client_id": "AZURE_CLIENT_ID",
    "token_file": "AZURE_FEDERATED_TOKEN_FILE",
    "authority_host": "AZURE_AUTHORITY_HOST",
}

# key -> (type, default). Types are checked before values.
TOP_LEVEL: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "output_dir": (str, "/run/entra-tokend"),
    "listen": (str, "0.0.0.0:9464"),
    "file_mode": ((str, int), "0640"),
    "log_format": (str, "auto"),
    "log_level": (str, "info"),
    "refresh_at": ((int, float), 0.5),
    "jitter": ((int, float), 0.1),
    "min_refresh_interval": ((int, float), 5.0),
    "backoff_initial": ((int, float), 1.0),
    "backoff_max": ((int, float), 60.0),
    "config_error_backoff_max": ((int, float), 300.0),
    "request_timeout": ((int, float), 10.0),
    "concurrency": (int, 16),
    "poll_interval": ((int, float), 60.0),
    "once_deadline": ((int, float), 60.0),
    "allow_world_writable": (bool, False),
    "file_owner": ((str, int), None),
    "file_group": ((str, int), None),
}
TABLES = ("identity", "token", "hook")
IDENTITY_KEYS = ("tenant_id", "client_id", "token_file", "authority_host", "ca_file")
TOKEN_KEYS = ("scope", "identity", "path", "format", "hook")
HOOK_KEYS = ("exec", "timeout", "pid_file", "signal")


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` holds one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Identity:
    """Who the daemon authenticates as: an app registration plus its projected token."""

    name: str
    tenant_id: str
    client_id: str
    token_file: Path
    authority_host: str
    ca_file: Path | None = None

    @property
    def token_endpoint(self) -> str:
        """The Entra v2 token endpoint for this identity's tenant."""
        return f"{self.authority_host}/{self.tenant_id}/oauth2/v2.0/token"


@dataclass(frozen=True)
class Hook:
    """What to do after a token file is replaced: run a command and/or signal a process."""

    exec: tuple[str, ...] = ()
    timeout: float = 10.0
    pid_file: Path | None = None
    signal: int = int(signal.SIGHUP)


@dataclass(frozen=True)
class TokenSpec:
    """One access token to keep fresh on disk. ``name`` is its identity in logs and metrics."""

    name: str
    scope: str
    identity: str
    path: Path
    format: str = "raw"
    hook: Hook | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    output_dir: Path
    listen: tuple[str, int] | None
    file_mode: int
    log_format: str
    log_level: str
    refresh_at: float
    jitter: float
    min_refresh_interval: float
    backoff_initial: float
    backoff_max: float
    config_error_backoff_max: float
    request_timeout: float
    concurrency: int
    poll_interval: float
    once_deadline: float
    allow_world_writable: bool
    file_owner: int | None
    file_group: int | None
    identities: Mapping[str, Identity]
    tokens: Mapping[str, TokenSpec]
    source: Path | None = None


@dataclass
class Overrides:
    """Values given on the command line; None means 'not given'."""

    config: str | None = None
    tokens: list[str] = field(default_factory=list)
    output_dir: str | None = None
    listen: str | None = None
    log_format: str | None = None
    log_level: str | None = None
    once_deadline: float | None = None


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)


def _suggest(key: str, known: Sequence[str]) -> str:
    import difflib  # noqa: PLC0415 - only for a mistyped key; start-up time is benchmarked

    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(table: Mapping[str, Any], known: Sequence[str], where: str, p: _Problems) -> None:
    for key in table:
        if key not in known:
            p.add(f"{where}: unknown key '{key}'{_suggest(key, known)}")


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if isinstance(t, tuple):
        return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in t))
    return names.get(t, t.__name__)


def _typed(value: Any, t: type | tuple[type, ...]) -> bool:
    # bool is an int subclass; a `true` where a number belongs is a mistake.
    if isinstance(value, bool) and t is not bool:
        return False
    return isinstance(value, t)


def _finite(value: Any) -> bool:
    # TOML integers are unbounded and TOML has inf/nan; neither is a usable number of seconds.
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _has_nul(value: Any, where: str, p: _Problems) -> bool:
    # A NUL cannot be in a path or an argv; the OS would reject it only later, mid-run.
    if isinstance(value, str) and "\x00" in value:
        p.add(f"{where}: must not contain a NUL character")
        return True
    return False


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; errors name the file (and line, for syntax errors)."""
    import tomllib  # noqa: PLC0415 - only when a config file is given

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file {path}: does not exist"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"config file {path}: cannot be read: {reason}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: invalid TOML: {exc}"]) from None


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``host:port`` (``[v6]:port`` for IPv6). Raises ValueError with the reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:9464")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", port


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses, where plain http cannot leave the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authority(value: str, where: str, p: _Problems) -> str:
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. an unclosed '[' of an IPv6 literal
        p.add(f"{where}: '{value}' is not an http(s) URL")
        return url
    if parts.scheme not in ("https", "http") or not hostname:
        p.add(f"{where}: '{value}' is not an http(s) URL")
    elif parts.scheme == "http" and not is_loopback_host(hostname):
        p.add(f"{where}: '{value}' uses plain http; only loopback authorities may (use https)")
    elif parts.query or parts.fragment:
        p.add(f"{where}: '{value}' must not have a query or fragment")
    return url


def _signal_number(value: Any) -> int | None:
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


def _hook(table: Any, where: str, base: Path, p: _Problems) -> Hook | None:
    if not isinstance(table, dict):
        p.add(f"{where}: must be a table")
        return None
    _check_keys(table, HOOK_KEYS, where, p)
    argv = table.get("exec", [])
    if not isinstance(argv, list) or not all(
        isinstance(a, str) and a and "\x00" not in a for a in argv
    ):
        p.add(f"{where}.exec: must be a list of non-empty strings (argv; no shell)")
        argv = []
    timeout = table.get("timeout", 10.0)
    if not _typed(timeout, (int, float)) or not _finite(timeout) or timeout <= 0:
        p.add(f"{where}.timeout: must be a positive number of seconds")
        timeout = 10.0
    pid_file = table.get("pid_file")
    if pid_file is not None and not (isinstance(pid_file, str) and pid_file):
        p.add(f"{where}.pid_file: must be a path string")
        pid_file = None
    elif _has_nul(pid_file, f"{where}.pid_file", p):
        pid_file = None
    sig = _signal_number(table.get("signal", "HUP"))
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


def _parse_token_shorthand(items: Sequence[str], where: str, p: _Problems) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for item in items:
        name, sep, scope = item.strip().partition("=")
        if not sep or not name.strip() or not scope.strip():
            p.add(f"{where}: '{item}' is not NAME=SCOPE")
            continue
        tokens[name.strip()] = scope.strip()
    return tokens


def check_scope(scope: str) -> str | None:
    """Return why ``scope`` is unusable for client credentials, or None when it is fine."""
    if not scope or any(c.isspace() for c in scope):
        return "must be exactly one scope with no spaces (one resource per token)"
    if not scope.endswith("/.default") or scope == "/.default":
        return (
            "client-credential flows need '<resource>/.default' "
            "(e.g. 'https://storage.azure.com/.default')"
        )
    return None


def _owner(value: Any, where: str, p: _Problems, *, group: bool) -> int | None:
    if value is None:
        return None
    kind = "group" if group else "user"
    if isinstance(value, int) and not isinstance(value, bool):
        # 2**32 - 1 is (uid_t)-1, which chown reads as "leave unchanged".
        if 0 <= value < 2**32 - 1:
            return value
        p.add(f"{where}: {value} is not a valid {kind} id")
        return None
    try:
        return grp.getgrnam(str(value)).gr_gid if group else pwd.getpwnam(str(value)).pw_uid
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        text = str(value)
        if text.isascii() and text.isdigit():  # like chown(1): a name first, then an id
            return _owner(int(text), where, p, group=group)
        p.add(f"{where}: no such {kind} '{value}'")
        return None


def _check_output_dir(path: Path, allow_world_writable: bool, p: _Problems) -> None:
    if _has_nul(str(path), "output_dir", p):
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # created at start-up
    except OSError as exc:
        p.add(f"output_dir: {path} cannot be examined: {exc.strerror}")
        return
    if not stat.S_ISDIR(st.st_mode):
        p.add(f"output_dir: {path} exists but is not a directory")
    elif not os.access(path, os.W_OK | os.X_OK):
        p.add(f"output_dir: {path} is not writable by uid {os.getuid()}")
    elif st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX and not allow_world_writable:
        p.add(
            f"output_dir: {path} is world-writable without the sticky bit; anyone could replace "
            "the tokens (fix its mode, or set allow_world_writable = true)"
        )


def load_config(overrides: Overrides, env: Mapping[str, str]) -> Config:
    """Build and validate the configuration. Raises ConfigError listing every problem."""
    p = _Problems()
    config_path_text = overrides.config or env.get(ENV_CONFIG) or None
    source = Path(config_path_text) if config_path_text else None
    data: dict[str, Any] = read_toml(source) if source else {}
    where_file = str(source) if source else "config"

    _check_keys(data, [*TOP_LEVEL, *TABLES], where_file, p)

    values: dict[str, Any] = {}
    for key, (typ, default) in TOP_LEVEL.items():
        value = data.get(key, default)
        if value is not None and not _typed(value, typ):
            p.add(f"{key}: must be {_type_name(typ)} (got {value!r})")
            value = default
        values[key] = value
    # environment and flags win over the file
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
    for key, (typ, default) in TOP_LEVEL.items():
        if isinstance(typ, tuple) and float in typ and not _finite(values[key]):
            p.add(f"{key}: must be a finite number (got {values[key]!r})")
            values[key] = default

    file_mode = values["file_mode"]
    mode = 0o640
    try:
        mode = int(file_mode, 8) if isinstance(file_mode, str) else int(file_mode)
        if not 0 <= mode <= 0o777:
            raise ValueError
        if mode & 0o002:
            p.add(f"file_mode: {file_mode} would make tokens world-writable")
        elif not mode & 0o400:
            p.add(f"file_mode: {file_mode} leaves the owner unable to read the tokens")
    except ValueError:
        p.add(f"file_mode: '{file_mode}' is not an octal mode such as \"0640\"")

    listen: tuple[str, int] | None = None
    if values["listen"]:
        try:
            listen = parse_listen(values["listen"])
        except ValueError as exc:
            p.add(f"listen: '{values['listen']}': {exc} (flag --listen, {ENV_LISTEN})")
    if values["log_format"] not in LOG_FORMATS:
        p.add(f"log_format: '{values['log_format']}' must be one of {', '.join(LOG_FORMATS)}")
    if str(values["log_level"]).lower() not in LOG_LEVELS:
        p.add(f"log_level: '{values['log_level']}' must be one of {', '.join(LOG_LEVELS)}")
    values["log_level"] = str(values["log_level"]).lower()

    def number(key: str, ok: bool, rule: str) -> None:
        if not ok:
            p.add(f"{key}: {values[key]} {rule}")

    number("refresh_at", 0.1 <= values["refresh_at"] <= 0.9, "must be between 0.1 and 0.9")
    number("jitter", 0 <= values["jitter"] <= 0.5, "must be between 0 and 0.5")
    if values["refresh_at"] * (1 + values["jitter"]) > 0.95:
        p.add("refresh_at, jitter: refresh_at × (1 + jitter) must stay at or below 0.95")
    number("min_refresh_interval", values["min_refresh_interval"] >= 0, "must be >= 0")
    number("backoff_initial", values["backoff_initial"] > 0, "must be > 0")
    number(
        "backoff_max",
        values["backoff_max"] >= values["backoff_initial"],
        "must be >= backoff_initial",
    )
    number(
        "config_error_backoff_max",
        values["config_error_backoff_max"] >= values["backoff_max"],
        "must be >= backoff_max",
    )
    number("request_timeout", values["request_timeout"] > 0, "must be > 0")
    number("concurrency", 1 <= values["concurrency"] <= 1024, "must be between 1 and 1024")
    number("poll_interval", values["poll_interval"] >= 1, "must be >= 1 second")
    number("once_deadline", values["once_deadline"] > 0, "must be > 0 (flag --deadline)")

    output_dir = Path(values["output_dir"]).absolute()
    base = source.parent.absolute() if source else Path.cwd()

    # identities
    id_tables = data.get("identity", {})
    if not isinstance(id_tables, dict):
        p.add(f"{where_file}: 'identity' must be a table of [identity.NAME] tables")
        id_tables = {}
    # tokens: file, then environment, then flags
    tok_tables = data.get("token", {})
    if not isinstance(tok_tables, dict):
        p.add(f"{where_file}: 'token' must be a table of [token.NAME] tables")
        tok_tables = {}
    tok_tables = dict(tok_tables)
    shorthand = {
        **_parse_token_shorthand(
            [t for t in env.get(ENV_TOKENS, "").split(",") if t.strip()], ENV_TOKENS, p
        ),
        **_parse_token_shorthand(overrides.tokens, "--token", p),
    }
    for name, short_scope in shorthand.items():
        existing = tok_tables.get(name, {})
        # A non-table [token.NAME] stays as it is, to be reported below as "must be a table".
        tok_tables[name] = (
            {**existing, "scope": short_scope} if isinstance(existing, dict) else existing
        )
    if not tok_tables:
        p.add(
            "no tokens configured: add a [token.NAME] table with a scope, "
            f"--token NAME=SCOPE, or {ENV_TOKENS}=NAME=SCOPE"
        )

    global_hook = _hook(data["hook"], "hook", base, p) if "hook" in data else None

    tokens: dict[str, TokenSpec] = {}
    used_identities: set[str] = set()
    paths: dict[Path, str] = {}
    for name, table in tok_tables.items():
        where = f"token.{name}"
        if not NAME_RE.match(name):
            p.add(f"{where}: name must be letters, digits, '.', '_' or '-' (it names files)")
            continue
        if not isinstance(table, dict):
            p.add(f"{where}: must be a table")
            continue
        _check_keys(table, TOKEN_KEYS, where, p)
        scope = table.get("scope")
        if scope is None:
            p.add(f"{where}.scope: is required (e.g. 'https://storage.azure.com/.default')")
            continue
        if not isinstance(scope, str):
            p.add(f"{where}.scope: must be a string")
            continue
        why = check_scope(scope)
        if why:
            p.add(f"{where}.scope: '{scope}' {why}")
        identity = table.get("identity", DEFAULT_IDENTITY)
        if not isinstance(identity, str):
            p.add(f"{where}.identity: must be a string")
            identity = DEFAULT_IDENTITY
        used_identities.add(identity)
        fmt = table.get("format", "raw")
        if fmt not in FORMATS:
            p.add(f"{where}.format: '{fmt}' must be one of {', '.join(FORMATS)}")
        rel = table.get("path", name)
        if not isinstance(rel, str) or not rel:
            p.add(f"{where}.path: must be a non-empty string")
            rel = name
        elif _has_nul(rel, f"{where}.path", p):
            rel = name
        target = Path(os.path.normpath(output_dir / rel))
        if Path(rel).is_absolute() or not target.is_relative_to(output_dir) or target == output_dir:
            p.add(f"{where}.path: '{rel}' must be a file name inside output_dir")
        elif target.name == LOCK_NAME or is_temp_name(target.name):
            p.add(f"{where}.path: '{rel}' is a name entra-tokend uses for its lock or temp files")
        elif target in paths:
            p.add(f"{where}.path: token.{paths[target]} already writes to {target}")
        paths[target] = name
        hook = _hook(table["hook"], f"{where}.hook", base, p) if "hook" in table else global_hook
        tokens[name] = TokenSpec(
            name=name, scope=scope, identity=identity, path=target, format=str(fmt), hook=hook
        )

    identities: dict[str, Identity] = {}
    for name in sorted(set(id_tables) | used_identities):
        table = id_tables.get(name, {})
        where = f"identity.{name}"
        if not NAME_RE.match(name):
            p.add(f"{where}: name must be letters, digits, '.', '_' or '-'")
            continue
        if not isinstance(table, dict):
            p.add(f"{where}: must be a table")
            continue
        _check_keys(table, IDENTITY_KEYS, where, p)
        if name not in id_tables and name != DEFAULT_IDENTITY:
            users = sorted(t for t, s in tokens.items() if s.identity == name)
            p.add(f"token.{users[0]}.identity: '{name}' is not defined (add [identity.{name}])")
            continue
        resolved: dict[str, str] = {}
        for key in IDENTITY_KEYS:
            setting: Any = table.get(key)
            env_var = IDENTITY_ENV.get(key) if name == DEFAULT_IDENTITY else None
            if setting is None and env_var and env.get(env_var):
                setting = env[env_var]
            if setting is not None and not isinstance(setting, str):
                p.add(f"{where}.{key}: must be a string")
                setting = None
            elif _has_nul(setting, f"{where}.{key}", p):
                setting = None
            if setting:
                resolved[key] = setting
        missing = False
        for key in ("tenant_id", "client_id", "token_file"):
            if key not in resolved:
                missing = True
                var = IDENTITY_ENV[key]
                hint = f"set {var} or {where}.{key}" if name == DEFAULT_IDENTITY else where
                p.add(f"{where}: {key} is not set ({hint})")
        if missing:
            continue
        if not TENANT_RE.match(resolved["tenant_id"]):
            p.add(f"{where}.tenant_id: '{resolved['tenant_id']}' is not a tenant id or domain")
        var_hint = f" ({IDENTITY_ENV['authority_host']})" if name == DEFAULT_IDENTITY else ""
        authority = _authority(
            resolved.get("authority_host", DEFAULT_AUTHORITY),
            f"{where}.authority_host{var_hint}",
            p,
        )
        ca_file: Path | None = None
        if "ca_file" in resolved:
            ca_file = base / resolved["ca_file"]
            if not ca_file.is_file():
                p.add(f"{where}.ca_file: {ca_file} is not a readable file")
        identities[name] = Identity(
            name=name,
            tenant_id=resolved["tenant_id"],
            client_id=resolved["client_id"],
            token_file=Path(resolved["token_file"]),
            authority_host=authority,
            ca_file=ca_file,
        )

    owner = _owner(values["file_owner"], "file_owner", p, group=False)
    group = _owner(values["file_group"], "file_group", p, group=True)
    _check_output_dir(output_dir, bool(values["allow_world_writable"]), p)

    if p.lines:
        raise ConfigError(p.lines)
    return Config(
        output_dir=output_dir,
        listen=listen,
        file_mode=mode,
        log_format=values["log_format"],
        log_level=values["log_level"],
        refresh_at=float(values["refresh_at"]),
        jitter=float(values["jitter"]),
        min_refresh_interval=float(values["min_refresh_interval"]),
        backoff_initial=float(values["backoff_initial"]),
        backoff_max=float(values["backoff_max"]),
        config_error_backoff_max=float(values["config_error_backoff_max"]),
        request_timeout=float(values["request_timeout"]),
        concurrency=int(values["concurrency"]),
        poll_interval=float(values["poll_interval"]),
        once_deadline=float(values["once_deadline"]),
        allow_world_writable=bool(values["allow_world_writable"]),
        file_owner=owner,
        file_group=group,
        identities=identities,
        tokens=tokens,
        source=source,
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(config: Config) -> str:
    """The effective configuration as TOML (it holds no secrets: ids are not credentials)."""
    lines = [f"# effective configuration{f' (from {config.source})' if config.source else ''}"]
    top: dict[str, Any] = {
        "output_dir": str(config.output_dir),
        "listen": f"{config.listen[0]}:{config.listen[1]}" if config.listen else "",
        "file_mode": f"{config.file_mode:04o}",
    }
    for key in TOP_LEVEL:
        if key not in top:
            value = getattr(config, key)
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
            f"format = {_toml_value(tok.format)}",
        ]
        if tok.hook:
            lines.append(f"[token.{tok.name}.hook]")
            if tok.hook.exec:
                lines.append(f"exec = {_toml_value(list(tok.hook.exec))}")
            lines.append(f"timeout = {tok.hook.timeout!r}")
            if tok.hook.pid_file:
                lines.append(f"pid_file = {_toml_value(str(tok.hook.pid_file))}")
            lines.append(f"signal = {_toml_value(signal.Signals(tok.hook.signal).name)}")
    return "\n".join(lines) + "\n"
