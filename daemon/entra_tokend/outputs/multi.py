"""``[file.NAME]``: one file rendered from several tokens.

The language is ``string.Template`` (PEP 292) with one change: a placeholder names a token and
one of its fields, ``${TOKEN.FIELD}`` (or ``$TOKEN.FIELD`` when the token's name is letters,
digits and ``_``); ``$$`` is a literal ``$``. Nothing else — no expressions, conditionals,
loops, file or environment access — so a template can reach exactly the fields of the tokens
configured in the same file (``template.FIELDS``: the token's value, type, scope, resource,
expiry as unix seconds and RFC 3339, tenant and client ids, its name, and the claims of
``claims.CLAIM_FIELDS``). A token name with dots or dashes needs the braces; the field is what
follows the last dot.

``check`` runs at configuration load (unknown tokens and fields, syntax, an empty template are
configuration errors); ``render`` runs when every token the file needs is held, and raises only
``claims.MissingClaim``.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping

from entra_tokend.model import AccessToken
from entra_tokend.outputs import template as single
from entra_tokend.outputs.claims import CLAIM_FIELDS, claim_values


class FileTemplate(string.Template):
    """``string.Template`` whose placeholders are ``TOKEN.FIELD``."""

    # Unbraced: a plain token name, one dot, a field (so "$a.access_token." ends at the field).
    idpattern = r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*"
    # Braced: any configured token name (letters, digits, '.', '_', '-'), then '.' and a field.
    braceidpattern = r"[a-z0-9][a-z0-9_.-]*\.[a-z_][a-z0-9_]*"


def split(identifier: str) -> tuple[str, str]:
    """``"a.b.oid"`` → ``("a.b", "oid")``: the field is what follows the last dot."""
    token, _, field = identifier.rpartition(".")
    return token, field


def check(text: str, tokens: Collection[str]) -> tuple[list[str], list[str]]:
    """(problems, tokens named) of a file template; ``tokens`` are the configured token
    names. Each problem is one line naming the placeholder, e.g. ``unknown field 'nope' in
    ${a.nope}``."""
    if not text:
        return ["must not be empty (a token file is never empty)"], []
    template = FileTemplate(text)
    if not template.is_valid():
        try:
            template.substitute(dict.fromkeys(template.get_identifiers(), ""))
        except ValueError as exc:
            return [
                f"template syntax error: {exc} (write ${{TOKEN.FIELD}}, and $$ for a literal '$')"
            ], []
        except KeyError:  # pragma: no cover - identifiers were all supplied
            pass
    problems: list[str] = []
    named: list[str] = []
    for identifier in template.get_identifiers():
        token, field = split(identifier)
        if token not in tokens:
            known = ", ".join(sorted(tokens)) or "none configured"
            problems.append(f"unknown token '{token}' in ${{{identifier}}} (tokens: {known})")
        elif field not in single.FIELDS:
            problems.append(
                f"unknown field '{field}' in ${{{identifier}}} (fields: {', '.join(single.FIELDS)})"
            )
        elif token not in named:
            named.append(token)
    return problems, named


def render(text: str, tokens: Mapping[str, AccessToken]) -> bytes:
    """``text`` (checked by ``check``) with every placeholder replaced, UTF-8. ``tokens`` holds
    a token for every name the template uses. Raises ``claims.MissingClaim``."""
    template = FileTemplate(text)
    values: dict[str, str] = {}
    wanted: dict[str, list[str]] = {}
    for identifier in template.get_identifiers():
        name, field = split(identifier)
        wanted.setdefault(name, []).append(field)
    for name, fields in wanted.items():
        token = tokens[name]
        own = single.fields(token, name)
        own.update(claim_values(token, [f for f in fields if f in CLAIM_FIELDS]))
        values.update({f"{name}.{field}": own[field] for field in fields})
    return template.substitute(values).encode()
