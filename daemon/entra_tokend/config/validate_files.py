"""``[file.NAME]`` tables: files rendered from several tokens (``outputs.multi``).

Checked at load like a token's template: an unknown key, token or field, a syntax error, an
empty template, a path another file or token already writes — each one line naming the key.
Reading ``template_file`` and looking up ``file_owner``/``file_group`` are host checks
(``host``), as for tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entra_tokend.config import host, validate
from entra_tokend.config.schema import FILE_KEYS, NAME_RE
from entra_tokend.config.validate import Problems, check_keys, has_nul
from entra_tokend.model import FileSpec, OutputSpec, TokenSpec
from entra_tokend.outputs import multi


def files(
    tables: Mapping[str, Any],
    tokens: Mapping[str, TokenSpec],
    defaults: OutputSpec,
    base: Path,
    p: Problems,
) -> dict[str, FileSpec]:
    """Every ``[file.NAME]`` table as a ``FileSpec``; ``tokens`` are the configured tokens
    (their paths are taken), ``defaults`` carries output_dir and the file settings."""
    found: dict[str, FileSpec] = {}
    paths = {spec.path: f"token.{name}" for name, spec in tokens.items()}
    for name, table in tables.items():
        spec = _file(name, table, tokens, defaults, base=base, p=p)
        if spec is None:
            continue
        if spec.path in paths:
            p.add(f"file.{name}.path: {paths[spec.path]} already writes to {spec.path}")
            continue
        paths[spec.path] = f"file.{name}"
        found[name] = spec
    return found


def _file(
    name: str,
    table: Any,
    tokens: Mapping[str, TokenSpec],
    defaults: OutputSpec,
    *,
    base: Path,
    p: Problems,
) -> FileSpec | None:
    where = f"file.{name}"
    if not NAME_RE.match(name):
        p.add(f"{where}: name must be letters, digits, '.', '_' or '-' (it names a file)")
        return None
    if not isinstance(table, dict):
        p.add(f"{where}: must be a table")
        return None
    check_keys(table, FILE_KEYS, where, p)
    target = validate.token_path(table.get("path", name), name, defaults.path, where, p)
    text = _text(table, base, where, p)
    named: list[str] = []
    if text is not None:
        key = "template" if "template" in table else "template_file"
        problems, named = multi.check(text, tokens)
        for problem in problems:
            p.add(f"{where}.{key}: {problem}")
        if problems:
            text = None
    # Only a usable template's tokens are compared with `tokens`: one mistake, one line.
    needed = None if text is None else _needed(table.get("tokens"), named, tokens, where, p)
    mode = defaults.file_mode
    if "file_mode" in table:
        mode = validate.file_mode(table["file_mode"], f"{where}.file_mode", p)
    owner = defaults.file_owner
    if "file_owner" in table:
        owner = host.owner(table["file_owner"], f"{where}.file_owner", p, group=False)
    group = defaults.file_group
    if "file_group" in table:
        group = host.owner(table["file_group"], f"{where}.file_group", p, group=True)
    hook = validate.hook(table["hook"], f"{where}.hook", base, p) if "hook" in table else None
    if text is None or needed is None:
        return None
    return FileSpec(name, target, text, needed, mode, owner, group, hook)


def _text(table: Mapping[str, Any], base: Path, where: str, p: Problems) -> str | None:
    """The template text: ``template`` or the file ``template_file`` names (exactly one)."""
    if ("template" in table) == ("template_file" in table):
        p.add(f'{where}.template: give exactly one of template = "..." or template_file')
        return None
    if "template_file" in table:
        return host.template_file(table["template_file"], base, f"{where}.template_file", p)
    text = table["template"]
    if not isinstance(text, str):
        p.add(f"{where}.template: must be a string")
        return None
    return None if has_nul(text, f"{where}.template", p) else text


def _needed(
    listed: Any,
    named: list[str],
    tokens: Mapping[str, TokenSpec],
    where: str,
    p: Problems,
) -> tuple[str, ...] | None:
    """The tokens the file waits for: those the template names, then the other listed ones."""
    if listed is None:
        if not named:
            p.add(f"{where}.template: names no token (write ${{TOKEN.access_token}})")
            return None
        return tuple(named)
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        p.add(f'{where}.tokens: must be a list of token names, e.g. ["storage", "graph"]')
        return None
    unknown = [t for t in listed if t not in tokens]
    for token in unknown:
        p.add(f"{where}.tokens: '{token}' is not a configured token (add [token.{token}])")
    for token in named:
        if token not in listed:
            p.add(f"{where}.tokens: the template uses '{token}'; list it too (or drop tokens)")
    if unknown or not listed or any(t not in listed for t in named):
        if not listed:
            p.add(f"{where}.tokens: must name at least one token")
        return None
    return tuple(dict.fromkeys([*named, *listed]))
