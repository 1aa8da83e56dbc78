"""``[file.NAME]``: one file rendered from several tokens.

The language is ``string.Template`` (PEP 292) with one change: a placeholder names a token and
one of its fields, ``${TOKEN.FIELD}`` (or ``$TOKEN.FIELD`` when the token's name is letters,
digits and ``_``); ``$$`` is a literal ``$``. Nothing else — no expressions, conditionals,
loops, file or environment access — so a template can reach exactly the fields of the tokens
configured in the same file (``template.FIELDS``: the token's value, type, scope, resource,
expiry as unix seconds and RFC 3339, tenant and client ids, its name, and the claims of
``claims.CLAIM_FIELDS``). A token name with dots or dashes needs the braces; the field is what
follows the last dot.

``check`` (``util.formats.check_file_template``) runs at configuration load: unknown tokens and
fields, syntax, an empty template are configuration errors; ``render`` runs when every token
the file needs is held, and raises only ``claims.MissingClaim``.
"""

from __future__ import annotations

from collections.abc import Mapping

from entra_tokend.model import AccessToken
from entra_tokend.outputs import template as single
from entra_tokend.outputs.claims import claim_values
from entra_tokend.util.formats import CLAIM_FIELDS, FileTemplate, split_placeholder
from entra_tokend.util.formats import check_file_template as check

__all__ = ["FileTemplate", "check", "render"]


def render(text: str, tokens: Mapping[str, AccessToken]) -> bytes:
    """``text`` (checked by ``check``) with every placeholder replaced, UTF-8. ``tokens`` holds
    a token for every name the template uses. Raises ``claims.MissingClaim``."""
    template = FileTemplate(text)
    values: dict[str, str] = {}
    wanted: dict[str, list[str]] = {}
    for identifier in template.get_identifiers():
        name, field = split_placeholder(identifier)
        wanted.setdefault(name, []).append(field)
    for name, fields in wanted.items():
        token = tokens[name]
        own = single.fields(token, name)
        own.update(claim_values(token, [f for f in fields if f in CLAIM_FIELDS]))
        values.update({f"{name}.{field}": own[field] for field in fields})
    return template.substitute(values).encode()
