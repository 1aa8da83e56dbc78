"""Config files: ``write_config`` writes TOML from keyword settings and ``[token.NAME]``
tables; ``STORAGE``, ``VAULT`` and ``GRAPH`` are the scopes the suites use."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
GRAPH = "https://graph.microsoft.com/.default"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def write_config(
    path: Path,
    tokens: Mapping[str, str] | None = None,
    *,
    body: str = "",
    **settings: object,
) -> Path:
    """Write a TOML config to ``path`` and return ``path``.

    In order: ``settings`` as top-level keys (``listen=""``, ``backoff_max=0.2``...), then
    ``body`` verbatim (more top-level keys, or tables such as ``[identity.x]``), then one
    ``[token.NAME]`` table with ``scope = SCOPE`` per item of ``tokens``.
    """
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
    text = "\n".join(lines) + ("\n" if lines else "") + body
    if text and not text.endswith("\n"):
        text += "\n"
    for name, scope in (tokens or {}).items():
        text += f"[token.{name}]\nscope = {_toml(scope)}\n"
    path.write_text(text)
    return path
