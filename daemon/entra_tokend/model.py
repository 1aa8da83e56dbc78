"""Plain data shared by every stage: who authenticates, which tokens, what came back, why it failed.

Nothing here does I/O or imports another module of this package; every other module may import
it. The pipeline (see the README's "Architecture" section) moves these values one way:

    Identity + TokenSpec ──► exchange ──► AccessToken ──► output (OutputSpec) ──► file
                                  └──────── Reason (on failure) ──► metrics, logs, scheduler
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class Reason(StrEnum):
    """Why a refresh failed: the ``reason`` label of the failure counter and the log field.

    A closed set, so metric labels stay bounded. Exceptions, metrics and logs all use it.
    """

    NETWORK = "network"
    """No answer: connection refused/reset, DNS, TLS handshake failure."""
    TIMEOUT = "timeout"
    """No complete answer within ``request_timeout``."""
    THROTTLED = "throttled"
    """HTTP 429 (honour Retry-After)."""
    SERVER_ERROR = "server_error"
    """HTTP 5xx."""
    INVALID_RESPONSE = "invalid_response"
    """An answer that is not a usable token response."""
    CLIENT_ERROR = "client_error"
    """HTTP 4xx with an Entra error body (AADSTS code)."""
    ASSERTION_UNAVAILABLE = "assertion_unavailable"
    """The projected token is missing, unreadable, malformed or expired."""
    WRITE_ERROR = "write_error"
    """The token file could not be written (disk full, read-only, planted directory)."""
    INTERNAL = "internal"
    """An unexpected error inside entra-tokend (a bug): logged with its type, backed off."""


def iso(ts: float | None) -> str | None:
    """A unix time as ISO 8601 UTC (for log fields); None stays None."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # outside what datetime represents
        return str(ts)


class Clock(Protocol):
    """Injectable time source (tests use a fake one and never wait)."""

    def wall(self) -> float:
        """Unix time, seconds."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds."""
        ...


class SystemClock:
    """The real clocks."""

    def wall(self) -> float:
        """Unix time, seconds."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


@dataclass(frozen=True)
class Policy:
    """Refresh and retry tunables; every duration in seconds (see the configuration reference).

    ``refresh_at`` and ``jitter`` are fractions of a token's lifetime. ``config_backoff_max``
    caps the backoff after a configuration error from Entra (TOML ``config_error_backoff_max``).
    """

    refresh_at: float = 0.5
    jitter: float = 0.1
    min_refresh_interval: float = 5.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    config_error_backoff_max: float = 300.0


@dataclass(frozen=True)
class Identity:
    """Who the daemon authenticates as: an app registration (or managed identity) and the
    projected service-account token used as its client assertion.

    ``authority_host`` is ``https://host[:port]`` without a trailing slash; ``ca_file`` a PEM
    bundle replacing the system trust store for this identity's requests to Entra.

    AKS identity bindings: with ``token_proxy`` (an ``https://`` URL, optionally with a base
    path) the token request goes to that proxy instead of ``authority_host``;
    ``token_proxy_sni_name`` is the TLS server name sent to it and checked against its
    certificate; ``token_proxy_ca_file`` (re-read when it changes) or ``token_proxy_ca_data``
    (PEM text) is the only trust for it. Without a CA the default trust store applies.

    Managed-identity endpoint selectors (besides ``client_id``): ``object_id`` (a GUID, the
    identity's principal id) and ``resource_id`` (its ARM resource id); None when not declared.
    """

    name: str
    tenant_id: str
    client_id: str
    token_file: Path
    authority_host: str
    ca_file: Path | None = None
    token_proxy: str | None = None
    token_proxy_sni_name: str | None = None
    token_proxy_ca_file: Path | None = None
    token_proxy_ca_data: str | None = field(default=None, repr=False)
    object_id: str | None = None
    resource_id: str | None = None


@dataclass(frozen=True)
class Hook:
    """What to do after a token file is replaced: run a command and/or signal a process.

    ``exec`` is an argv (no shell); ``timeout`` seconds; ``signal`` a signal number.
    """

    exec: tuple[str, ...] = ()
    timeout: float = 10.0
    pid_file: Path | None = None
    signal: int = int(signal.SIGHUP)


@dataclass(frozen=True)
class OutputSpec:
    """Where and how one token is written: an absolute ``path`` inside output_dir, a format
    name, the file's mode bits and optional owner/group ids.

    Format settings: ``name`` is the token's name (the ``template`` field ``token_name``);
    ``env_name``/``env_expires_name`` are the variable names of ``format = "env"``;
    ``template`` is the ``string.Template`` text of ``format = "template"`` (already read from
    ``template_file`` and checked at load time); ``registries`` the Azure Container Registries
    of ``format = "docker-config"`` (``host[:port]``, or ``http://host[:port]`` for a loopback
    registry), each an entry of the file.
    """

    path: Path
    format: str = "raw"
    file_mode: int = 0o640
    file_owner: int | None = None
    file_group: int | None = None
    name: str = ""
    env_name: str = "ACCESS_TOKEN"
    env_expires_name: str = "ACCESS_TOKEN_EXPIRES_ON"
    template: str | None = None
    registries: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenSpec:
    """One access token to keep fresh. ``name`` is its identity in file names, logs and metrics;
    ``identity`` names an ``Identity``; ``scope`` is ``<resource>/.default``."""

    name: str
    scope: str
    identity: str
    output: OutputSpec
    hook: Hook | None = None

    @property
    def path(self) -> Path:
        """The token file's absolute path."""
        return self.output.path

    @property
    def registries(self) -> tuple[str, ...]:
        """Azure Container Registries this token is exchanged at (empty: a plain Entra
        token)."""
        return self.output.registries


@dataclass(frozen=True)
class FileSpec:
    """A file rendered from several tokens (``[file.NAME]``, ``outputs.multi``).

    ``path`` is absolute, inside output_dir; ``template`` the checked template text (already
    read from ``template_file``); ``tokens`` the configured tokens it needs, in order: every
    token the template names, plus any listed in ``tokens`` — the file is written only while
    each is held and unexpired, and again whenever one of them is refreshed. File mode, owner
    and group as for a token's ``OutputSpec``; ``hook`` runs after each write.
    """

    name: str
    path: Path
    template: str
    tokens: tuple[str, ...]
    file_mode: int = 0o640
    file_owner: int | None = None
    file_group: int | None = None
    hook: Hook | None = None


def registry_key(registry: str) -> str:
    """The ``host[:port]`` a registry is known by in a docker config (scheme removed)."""
    return registry.removeprefix("http://").removeprefix("https://")


@dataclass(frozen=True)
class AccessToken:
    """An issued access token and where it came from. ``repr`` never shows the token.

    ``expires_in`` is the lifetime Entra granted (seconds); ``expires_on`` the unix time it
    ends, measured from when the request was *sent*; ``refresh_in`` Entra's hint (seconds) or
    None. ``tenant_id``/``client_id`` record the identity that obtained it (provenance).

    ``entra`` is set when this value describes a credential derived from an Entra token (a
    docker config: ACR refresh tokens in ``extra``, ``expires_on`` the first of their ends):
    the Entra token as issued, with its own expiry. ``bearer`` is the Entra token either way —
    what the managed-identity endpoint serves.
    """

    token: str = field(repr=False)
    token_type: str
    expires_in: float
    expires_on: float
    refresh_in: float | None
    scope: str
    request_id: str
    tenant_id: str = ""
    client_id: str = ""
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)
    entra: AccessToken | None = field(default=None, repr=False)

    @property
    def bearer(self) -> AccessToken:
        """The Entra access token with its own expiry: ``entra``, or this value itself."""
        return self.entra or self


def resource_key(resource: str) -> str:
    """A resource (or ``<resource>/.default`` scope) in the one form the endpoint compares:
    without ``/.default`` and without trailing slashes (``https://vault.azure.net/`` and
    ``https://vault.azure.net/.default`` are ``https://vault.azure.net``)."""
    key = resource.strip()
    if key.endswith("/.default"):
        key = key[: -len("/.default")]
    return key.rstrip("/")


def scope_of(resource: str) -> str:
    """The client-credential scope of a resource exactly as given: ``<resource>/.default``
    (a trailing slash kept: ``https://database.windows.net/`` → ``…//.default``, the v1
    audience with its slash); a ``/.default`` scope is returned as is."""
    value = resource.strip()
    return value if value.endswith("/.default") else value + "/.default"


def empty_segment(resource: str) -> bool:
    """True when ``resource`` (or its ``<resource>/.default`` scope) has an empty path segment:
    ``//`` after the scheme's ``//host`` (``https://a//b``), which includes more than one
    trailing slash (``https://a//``). Entra issues no such audience; the endpoint refuses it so
    that each allowed resource has exactly two scopes, ``R/.default`` and ``R//.default``."""
    value = resource.strip()
    if value.endswith("/.default"):
        value = value[: -len("/.default")]
    rest = value.partition(":")[2]
    return "//" in (rest[2:] if rest.startswith("//") else rest)


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[!-~]+$")
_BROKEN_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def is_resource_uri(value: str) -> bool:
    """True for an absolute URI a resource (or app ID URI) can be: ``scheme://host[/path]``
    or ``api://...``; printable ASCII, no blanks, no query or fragment, no broken
    percent-escape."""
    if not _URI.match(value) or "?" in value or "#" in value or _BROKEN_ESCAPE.search(value):
        return False
    scheme, _, rest = value.partition(":")
    if scheme.lower() == "api":
        return bool(rest.strip("/"))
    return rest.startswith("//") and bool(rest[2:].split("/", 1)[0])


@dataclass(frozen=True)
class Grant:
    """One entry of ``[endpoint] allow``: apps may get tokens for ``resource`` (its
    ``resource_key`` form) as the identity named ``identity``."""

    resource: str
    identity: str


@dataclass(frozen=True)
class EndpointSpec:
    """The local managed-identity endpoint (``[endpoint]``).

    ``listen`` is a loopback ``(host, port)``; ``secret`` the value apps must send in
    ``X-IDENTITY-HEADER`` (``repr`` never shows it); ``secret_source`` says where it came from
    (``secret_file = PATH`` or ``secret_env = NAME``, for ``check-config``); ``grants`` in
    configuration order (the first grant of a resource is used when a request names no
    client_id); ``idle_timeout`` seconds without a request before an on-demand token's runner
    retires; ``imds`` serves the IMDS protocol (no secret) on the same listener.
    """

    listen: tuple[str, int]
    secret: str = field(repr=False)
    secret_source: str
    grants: tuple[Grant, ...]
    idle_timeout: float = 900.0
    imds: bool = False


# ---- names entra-tokend reserves in output_dir (lock, temp files) -------------------------

LOCK_NAME = ".entra-tokend.lock"
"""The output directory's lock file (see ``lock``)."""
STATE_DIR = ".entra-tokend-state"
"""The daemon's private directory in output_dir: provenance records (see ``outputs``)."""
TEMP_MARKER = ".entra-tokend-"
_TEMP_RE = re.compile(r"^\..+\.entra-tokend-[0-9a-f]{16}\.tmp$")


def is_temp_name(name: str) -> bool:
    """True for the temp-file names the atomic writer produces (and only those)."""
    return bool(_TEMP_RE.match(name))


def is_reserved_name(name: str) -> bool:
    """True for a file name a token must not use: the lock file or a temp-file name."""
    return name in (LOCK_NAME, STATE_DIR) or is_temp_name(name)


ACR_NULL_USER = "00000000-0000-0000-0000-000000000000"
"""The user name that goes with an ACR refresh token (Azure/acr docs/AAD-OAuth.md)."""
