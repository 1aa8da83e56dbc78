"""``[file.NAME]`` tables: files rendered from several tokens (``outputs.multi``).

Checked at load like a token's template: an unknown key, token or field, a syntax error, an
empty template, a path another file or token already writes — each one line naming the key.
What only the host answers is left to the host checks (``preflight``), as for tokens: a
``template_file``'s text (listed in ``HostLookups.file_templates``; ``preflight`` checks it with
``template`` below and fills in ``FileSpec.template`` and ``tokens``) and user or group names.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from entra_tokend.config import validate
from entra_tokend.config.schema import FILE_KEYS, NAME_RE
from entra_tokend.config.validate import Problems, check_keys, has_nul
from entra_tokend.config.validate_outputs import template_path
from entra_tokend.model import FileSpec, OutputSpec, TokenSpec
from entra_tokend.util.formats import check_file_template


class Lookups(Protocol):
    """Where host look-ups are listed (``config._Lookups``)."""

    own: set[str]
    file_templates: list[tuple[str, Path]]

    def owner(self, value: Any, where: str, p: Problems, *, group: bool) -> int | None: ...


def files(
    tables: Mapping[str, Any],
    tokens: Mapping[str, TokenSpec],
    defaults: OutputSpec,
    *,
    base: Path,
    look: Lookups,
    p: Problems,
) -> dict[str, FileSpec]:
    """Every ``[file.NAME]`` table as a ``FileSpec``; ``tokens`` are the configured tokens
    (their paths are taken), ``defaults`` carries output_dir and the file settings. A file
    whose ``template_file`` is still to be read has ``template == ""`` and, as ``tokens``, the
    ``tokens`` setting (empty when not given)."""
    found: dict[str, FileSpec] = {}
    paths = {spec.path: f"token.{name}" for name, spec in tokens.items()}
    for name, table in tables.items():
        spec = _file(name, table, tokens, defaults, base=base, look=look, p=p)
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
    look: Lookups,
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
    listed = _listed(table.get("tokens"), tokens, where, p)
    spec = FileSpec(name, target, "", listed or (), defaults.file_mode)
    spec = _file_settings(spec, table, defaults, look, p)
    if "hook" in table:
        spec = replace(spec, hook=validate.hook(table["hook"], f"{where}.hook", base, p))
    if ("template" in table) == ("template_file" in table):
        p.add(f'{where}.template: give exactly one of template = "..." or template_file')
        return None
    if listed is None:
        return None
    if "template_file" in table:
        path = template_path(table["template_file"], base, f"{where}.template_file", p)
        if path is not None:
            look.file_templates.append((name, path))
        return spec
    text = table["template"]
    if not isinstance(text, str):
        p.add(f"{where}.template: must be a string")
        return None
    if has_nul(text, f"{where}.template", p):
        return None
    return template(spec, text, tokens, f"{where}.template", p)


def _file_settings(
    spec: FileSpec, table: Mapping[str, Any], defaults: OutputSpec, look: Lookups, p: Problems
) -> FileSpec:
    """``file_mode``, ``file_owner``, ``file_group``: the file's own, else the top-level ones
    (names are looked up by the host checks)."""
    where = f"file.{spec.name}"
    mode, owner, group = defaults.file_mode, defaults.file_owner, defaults.file_group
    for key in ("file_mode", "file_owner", "file_group"):
        if key not in table:
            continue
        if not validate.typed(table[key], (str, int)):
            p.add(f"{where}.{key}: must be a string or an integer")
        elif key == "file_mode":
            mode = validate.file_mode(table[key], f"{where}.{key}", p)
        else:
            look.own.add(f"{where}.{key}")
            found = look.owner(table[key], f"{where}.{key}", p, group=key == "file_group")
            owner, group = (found, group) if key == "file_owner" else (owner, found)
    return replace(spec, file_mode=mode, file_owner=owner, file_group=group)


def template(
    spec: FileSpec, text: str, tokens: Collection[str], where: str, p: Problems
) -> FileSpec | None:
    """``spec`` with its checked template ``text`` and the tokens it needs: those the template
    names, then the others of its ``tokens`` setting (``spec.tokens``, empty when not given).
    None (problems reported) when the template is unusable."""
    problems, named = check_file_template(text, tokens)
    for problem in problems:
        p.add(f"{where}: {problem}")
    if problems:
        return None
    listed = spec.tokens
    if not listed:
        if not named:
            p.add(f"{where}: names no token (write ${{TOKEN.access_token}})")
            return None
        return replace(spec, template=text, tokens=tuple(named))
    missing = [t for t in named if t not in listed]
    for token in missing:
        p.add(f"file.{spec.name}.tokens: the template uses '{token}'; list it too (or drop tokens)")
    if missing:
        return None
    return replace(spec, template=text, tokens=tuple(dict.fromkeys([*named, *listed])))


def _listed(
    value: Any, tokens: Mapping[str, TokenSpec], where: str, p: Problems
) -> tuple[str, ...] | None:
    """The ``tokens`` setting: () when absent, None (reported) when unusable."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        p.add(f'{where}.tokens: must be a list of token names, e.g. ["storage", "graph"]')
        return None
    if not value:
        p.add(f"{where}.tokens: must name at least one token (or leave it out)")
        return None
    unknown = [t for t in value if t not in tokens]
    for token in unknown:
        p.add(f"{where}.tokens: '{token}' is not a configured token (add [token.{token}])")
    return None if unknown else tuple(dict.fromkeys(value))
