"""The configuration's shape: every key, its type, default and unit, and the result types.

Units: every duration is in seconds (float); ``refresh_at`` and ``jitter`` are fractions of a
token's lifetime; ``file_mode`` is octal text such as ``"0640"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entra_tokend.model import EndpointSpec, FileSpec, Identity, Policy, TokenSpec

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_IDENTITY = "default"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
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
    # AKS identity bindings (azure-identity 1.27 azure/identity/_constants.py
    # EnvironmentVariables; injected by the workload-identity webhook when the pod carries
    # azure.workload.identity/use-identity-binding: "true").
    "token_proxy": "AZURE_KUBERNETES_TOKEN_PROXY",
    "token_proxy_sni_name": "AZURE_KUBERNETES_SNI_NAME",
    "token_proxy_ca_file": "AZURE_KUBERNETES_CA_FILE",
    "token_proxy_ca_data": "AZURE_KUBERNETES_CA_DATA",
}

Types = type | tuple[type, ...]

# key -> (type, default). Types are checked before values.
TOP_LEVEL: dict[str, tuple[Types, Any]] = {
    "output_dir": (str, "/run/entra-tokend"),
    "listen": (str, "[::]:9464"),  # dual-stack; 0.0.0.0 without IPv6 (listener.py)
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
POLICY_KEYS = (
    "refresh_at",
    "jitter",
    "min_refresh_interval",
    "backoff_initial",
    "backoff_max",
    "config_error_backoff_max",
)
"""Top-level keys that form the scheduler ``Policy`` (same names on both sides)."""
TABLES = ("identity", "token", "hook", "endpoint", "file")
IDENTITY_KEYS = (
    "tenant_id",
    "client_id",
    "token_file",
    "authority_host",
    "ca_file",
    "token_proxy",
    "token_proxy_sni_name",
    "token_proxy_ca_file",
    "token_proxy_ca_data",
    # What the managed-identity endpoint selects by besides client_id (validate_endpoint).
    "object_id",
    "resource_id",
)
TOKEN_PROXY_KEYS = IDENTITY_KEYS[5:9]
"""The identity-binding keys: any of them but ``token_proxy`` needs ``token_proxy``."""
TOKEN_KEYS = (
    "scope",
    "identity",
    "path",
    "format",
    "hook",
    "file_mode",
    "file_owner",
    "file_group",
    "env_name",
    "env_expires_name",
    "template",
    "template_file",
    "registry",
)
FORMAT_KEYS = {
    "env_name": ("env",),
    "env_expires_name": ("env",),
    "template": ("template",),
    "template_file": ("template",),
    "registry": ("docker-config",),
}
"""Token keys that only mean something with certain formats."""
ACR_SCOPE = "https://containerregistry.azure.net/.default"
"""The Entra scope an ACR exchange needs by default (Azure Container Registry's AAD audience)."""
FILE_KEYS = (
    "path",
    "template",
    "template_file",
    "tokens",
    "file_mode",
    "file_owner",
    "file_group",
    "hook",
)
"""Keys of a ``[file.NAME]`` table (a file rendered from several tokens)."""
HOOK_KEYS = ("exec", "timeout", "pid_file", "signal")
ENDPOINT_KEYS = ("listen", "secret_file", "secret_env", "allow", "idle_timeout", "imds")
ENDPOINT_IDLE_TIMEOUT = 900.0
"""Default seconds without a request before an on-demand token's runner retires."""


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` holds one line each, naming the key,
    flag or variable to fix."""

    def __init__(self, problems: Sequence[str], lookups: HostLookups | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)
        self.lookups = lookups
        """What the host checks may still examine (so that ``preflight.load`` reports their
        problems in the same round), or None when the configuration could not be read."""


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


@dataclass(frozen=True)
class OwnerLookup:
    """A ``file_owner``/``file_group`` name ``load_config`` leaves to the host checks (chown(1)
    semantics: a user or group name first, then a numeric id). ``key`` is where it was set
    (``file_owner``, ``token.NAME.file_group``, ``file.NAME.file_owner``); ``tokens`` the
    tokens whose files get it, and ``file:NAME`` for each ``[file.NAME]`` that does."""

    key: str
    value: str
    group: bool
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class HostLookups:
    """What only the machine the daemon runs on can answer, listed by the pure ``load_config``
    for the host checks (``entra_tokend.preflight``), which look it up and fill it in.

    ``owners``: user and group names to resolve; ``templates``: (token name, path) of each
    ``template_file`` to read; ``secret_file``: the endpoint's secret to read. Checked but not
    read into the configuration: ``output_dir``, ``ca_files`` and ``token_proxy_ca_files``
    ((key, path) pairs, the key naming the setting in problem lines).
    """

    output_dir: Path
    owners: tuple[OwnerLookup, ...] = ()
    templates: tuple[tuple[str, Path], ...] = ()
    secret_file: Path | None = None
    ca_files: tuple[tuple[str, Path], ...] = ()
    token_proxy_ca_files: tuple[tuple[str, Path], ...] = ()
    file_templates: tuple[tuple[str, Path], ...] = ()
    """(file name, path) of each ``[file.NAME] template_file`` to read and check."""
    template_paths: tuple[tuple[str, Path], ...] = ()
    """(``token.NAME`` or ``file.NAME``, path) of every ``template_file`` once read: what
    ``check-config`` prints instead of the text (a file's content is the operator's, and may be
    anything the daemon can read)."""

    @property
    def pending(self) -> bool:
        """True while values of the configuration wait for these lookups."""
        return bool(self.owners or self.templates or self.secret_file or self.file_templates)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration.

    ``policy`` holds the refresh/backoff tunables (seconds, fractions); ``request_timeout`` and
    ``poll_interval`` and ``once_deadline`` are seconds; ``listen`` is ``(host, port)`` or None
    (disabled); ``file_mode`` the default mode bits of token files.
    """

    output_dir: Path
    listen: tuple[str, int] | None
    file_mode: int
    log_format: str
    log_level: str
    policy: Policy
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
    endpoint: EndpointSpec | None = None
    """The managed-identity endpoint, or None when ``[endpoint]`` is absent."""
    files: Mapping[str, FileSpec] = field(default_factory=dict)
    """Files rendered from several tokens (``[file.NAME]``), by name."""
    host: HostLookups | None = None
    """What the host checks look up (None: nothing, e.g. a Config built by hand in a test).
    While ``host.pending``, owner ids, template texts and the endpoint secret named there are
    unset: ``entra_tokend.preflight.resolve`` fills them in, and only a resolved Config runs."""
    run_time: tuple[str, ...] = ()
    """``check-config --offline`` only: settings only the pod supplies (AZURE_TENANT_ID, ...,
    an endpoint secret variable) that were absent, as ``KEY (VARIABLE)``; their values in this
    Config are empty placeholders."""

    @property
    def written(self) -> list[TokenSpec | FileSpec]:
        """Every file the daemon writes: the tokens', then the ``[file.NAME]`` ones (each has
        ``path`` and ``hook``)."""
        return [*self.tokens.values(), *self.files.values()]

    @property
    def resolved(self) -> bool:
        """True when nothing waits for the host checks (see ``host``) and nothing for the pod."""
        return not self.run_time and (self.host is None or not self.host.pending)
