"""Helpers for the deployment tests: repository paths, unit-file, TOML and manifest parsing.

The real CLI, its environment and the tool lookup are the shared ones (testlib).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from testlib import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UNIT = REPO / "systemd" / "entra-tokend.service"
SYSUSERS = REPO / "systemd" / "entra-tokend.sysusers.conf"
ENV_EXAMPLE = REPO / "systemd" / "entra-tokend.env.example"
TOML_EXAMPLE = REPO / "config" / "entra-tokend.toml"
K8S_DIR = REPO / "config" / "kubernetes"

# The configuration reference (README / issue 2): every key a config file may contain.
TOP_LEVEL_KEYS = frozenset(
    {
        "output_dir",
        "listen",
        "file_mode",
        "log_format",
        "log_level",
        "refresh_at",
        "jitter",
        "min_refresh_interval",
        "backoff_initial",
        "backoff_max",
        "config_error_backoff_max",
        "request_timeout",
        "concurrency",
        "poll_interval",
        "once_deadline",
        "allow_world_writable",
        "file_owner",
        "file_group",
    }
)
TABLE_KEYS = frozenset({"identity", "token", "hook", "file"})
IDENTITY_KEYS = frozenset(
    {
        "tenant_id",
        "client_id",
        "token_file",
        "authority_host",
        "ca_file",
        "token_proxy",
        "token_proxy_sni_name",
        "token_proxy_ca_file",
        "token_proxy_ca_data",
        "object_id",
        "resource_id",
    }
)
TOKEN_KEYS = frozenset({"scope", "identity", "path", "format", "hook"})
HOOK_KEYS = frozenset({"exec", "timeout", "pid_file", "signal"})
FILE_KEYS = frozenset(
    {"path", "template", "template_file", "tokens", "file_mode", "file_owner", "file_group", "hook"}
)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Parse a systemd unit into ``{"Section.Key": [values...]}``, keeping repeated keys in order.

    configparser cannot do this: systemd allows (and this unit uses) the same key several times.
    """
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert not line.endswith("\\"), f"continuation lines are not expected: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE in {path.name}: {raw!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def env_file(path: Path) -> dict[str, str]:
    """Parse a systemd EnvironmentFile of plain ``KEY=VALUE`` lines (comments skipped)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not a variable name: {raw!r}"
        env[key] = value
    return env


_COMMENTED_SETTING = re.compile(r"^#(?=\[|[A-Za-z_][A-Za-z0-9_.-]* = )")


def uncomment_settings(text: str) -> str:
    """Enable every commented-out setting of the annotated example ("#key = ..." or "#[table]").

    Prose comments start with "# " and stay comments, so the result shows every optional setting
    as TOML that must itself parse.
    """
    return "\n".join(_COMMENTED_SETTING.sub("", line) for line in text.splitlines()) + "\n"


def unknown_keys(doc: Mapping[str, Any]) -> list[str]:
    """Keys of a parsed config that the configuration reference does not list."""
    bad = [k for k in doc if k not in TOP_LEVEL_KEYS | TABLE_KEYS]
    for name, table in dict(doc.get("identity", {})).items():
        bad += [f"identity.{name}.{k}" for k in table if k not in IDENTITY_KEYS]
    for name, table in dict(doc.get("token", {})).items():
        bad += [f"token.{name}.{k}" for k in table if k not in TOKEN_KEYS]
        bad += [f"token.{name}.hook.{k}" for k in table.get("hook", {}) if k not in HOOK_KEYS]
    bad += [f"hook.{k}" for k in doc.get("hook", {}) if k not in HOOK_KEYS]
    for name, table in dict(doc.get("file", {})).items():
        bad += [f"file.{name}.{k}" for k in table if k not in FILE_KEYS]
    return bad


def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under config/kubernetes, by file name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        out[path.name] = docs
    return out


def k8s_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest of ``kind``."""
    return [(name, d) for name, docs in k8s_documents().items() for d in docs if d["kind"] == kind]
