"""Helpers for the deployment tests: repository paths, unit-file, TOML, manifest and
Dockerfile parsing. The configuration's key sets are ``support.config_keys``' (from the daemon's
schema)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from support import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UNIT = REPO / "systemd" / "entra-tokend.service"
SYSUSERS = REPO / "systemd" / "entra-tokend.sysusers.conf"
ENV_EXAMPLE = REPO / "systemd" / "entra-tokend.env.example"
TOML_EXAMPLE = REPO / "config" / "entra-tokend.toml"
K8S_DIR = REPO / "config" / "kubernetes"


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


# -------------------------------------------------------------------------------- Dockerfile


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "dangling continuation line"
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped per build stage; stage 0 is what precedes the first FROM."""
    groups: list[list[tuple[str, str]]] = [[]]
    for instr in instructions():
        if instr[0] == "FROM":
            groups.append([])
        groups[-1].append(instr)
    return groups
