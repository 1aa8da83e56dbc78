"""The configuration's keys, taken from the daemon's schema (``entra_tokend.config.schema``).

Tests that compare a file with "every key" use these, never a copied list: when the loader
grows a key, the example config and the manifests must show it or those tests fail. Key sets
are frozensets of key names; ``unknown_keys`` and ``missing_keys`` take a parsed TOML document
and return dotted key paths (``token.arm.hook.exec``), sorted as found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from entra_tokend.config import schema

TOP_LEVEL_KEYS = frozenset(schema.TOP_LEVEL)
TABLE_KEYS = frozenset(schema.TABLES)
IDENTITY_KEYS = frozenset(schema.IDENTITY_KEYS)
TOKEN_KEYS = frozenset(schema.TOKEN_KEYS)
HOOK_KEYS = frozenset(schema.HOOK_KEYS)
ENDPOINT_KEYS = frozenset(schema.ENDPOINT_KEYS)
FILE_KEYS = frozenset(schema.FILE_KEYS)
FORMAT_KEYS = {key: frozenset(formats) for key, formats in schema.FORMAT_KEYS.items()}
"""Token keys that only mean something with certain formats: key -> those formats."""


def _tables(doc: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return dict(doc.get(kind, {}))


def unknown_keys(doc: Mapping[str, Any]) -> list[str]:
    """Keys of a parsed config that the schema does not define."""
    bad = [k for k in doc if k not in TOP_LEVEL_KEYS | TABLE_KEYS]
    for name, table in _tables(doc, "identity").items():
        bad += [f"identity.{name}.{k}" for k in table if k not in IDENTITY_KEYS]
    for name, table in _tables(doc, "token").items():
        bad += [f"token.{name}.{k}" for k in table if k not in TOKEN_KEYS]
        bad += [f"token.{name}.hook.{k}" for k in table.get("hook", {}) if k not in HOOK_KEYS]
    bad += [f"hook.{k}" for k in doc.get("hook", {}) if k not in HOOK_KEYS]
    bad += [f"endpoint.{k}" for k in doc.get("endpoint", {}) if k not in ENDPOINT_KEYS]
    for name, table in _tables(doc, "file").items():
        bad += [f"file.{name}.{k}" for k in table if k not in FILE_KEYS]
        bad += [f"file.{name}.hook.{k}" for k in table.get("hook", {}) if k not in HOOK_KEYS]
    return bad


def missing_keys(doc: Mapping[str, Any]) -> list[str]:
    """Keys of the schema that a parsed config never shows: each top-level key and table, each
    identity key in some ``[identity.*]``, each token key in some ``[token.*]``, each hook key
    in ``[hook]`` and in some ``[token.*.hook]``, each endpoint key in ``[endpoint]``, each file
    key in some ``[file.*]``. Format keys count only in a token of a format they belong to."""
    tokens = _tables(doc, "token").values()
    shown_identity = {k for table in _tables(doc, "identity").values() for k in table}
    shown_token = {
        k
        for table in tokens
        for k in table
        if k not in FORMAT_KEYS or table.get("format") in FORMAT_KEYS[k]
    }
    token_hooks = [table["hook"] for table in tokens if "hook" in table]
    shown_token_hook = {k for hook in token_hooks for k in hook}
    missing = sorted((TOP_LEVEL_KEYS | TABLE_KEYS) - set(doc))
    missing += [f"identity.*.{k}" for k in sorted(IDENTITY_KEYS - shown_identity)]
    missing += [f"token.*.{k}" for k in sorted(TOKEN_KEYS - shown_token)]
    missing += [f"hook.{k}" for k in sorted(HOOK_KEYS - set(doc.get("hook", {})))]
    missing += [f"token.*.hook.{k}" for k in sorted(HOOK_KEYS - shown_token_hook)]
    missing += [f"endpoint.{k}" for k in sorted(ENDPOINT_KEYS - set(doc.get("endpoint", {})))]
    shown_file = {k for table in _tables(doc, "file").values() for k in table}
    missing += [f"file.*.{k}" for k in sorted(FILE_KEYS - shown_file)]
    return missing
