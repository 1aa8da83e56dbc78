"""The output formats' names and the pure checks of their settings, for ``config`` (which must
not import ``outputs``: that package pulls in the atomic writer). ``outputs`` renders with them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection

FORMAT_NAMES = ("raw", "json", "header", "env", "template", "docker-config")
"""Every ``[token.NAME] format``; the first is the default. ``outputs.FORMATS`` has one renderer
for each (a test keeps the two in step)."""

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""A variable name every consumer of ``format = "env"`` accepts (POSIX shell names)."""

TEMPLATE_FIELDS = (
    "access_token",
    "expires_on",
    "expires_on_rfc3339",
    "token_type",
    "scope",
    "resource",
    "tenant_id",
    "client_id",
    "token_name",
    "oid",
    "tid",
    "appid",
    "azp",
    "aud",
    "exp",
    "iat",
)
"""The ``$fields`` a ``format = "template"`` template (and a ``[file.NAME]`` placeholder) may
use; the last seven, ``CLAIM_FIELDS``, are read from the access token's claims."""
CLAIM_FIELDS = TEMPLATE_FIELDS[-7:]
"""Template fields read from the access token's JWT payload (``outputs.claims``)."""


def check_template(text: str) -> list[str]:
    """Problems with a template (empty when usable): one text per syntax error or unknown
    field, naming the field, e.g. ``unknown field 'acess_token'``. An empty template is one:
    it would write an empty token file, which no reader can tell from a failed write."""
    if not text.strip():
        return ['is empty; a template must write something (e.g. "$access_token")']
    template = string.Template(text)
    if not template.is_valid():
        # substitute() reports the position of the first bad '$'.
        try:
            template.substitute(dict.fromkeys(template.get_identifiers(), ""))
        except ValueError as exc:
            return [f"template syntax error: {exc} (write $$ for a literal '$')"]
        except KeyError:  # pragma: no cover - identifiers were all supplied
            pass
    return [
        f"unknown field '{name}' (fields: {', '.join(TEMPLATE_FIELDS)})"
        for name in template.get_identifiers()
        if name not in TEMPLATE_FIELDS
    ]


class FileTemplate(string.Template):
    """The template of a ``[file.NAME]`` (``outputs.multi``): ``string.Template`` whose
    placeholders are ``TOKEN.FIELD``."""

    # Unbraced: a plain token name, one dot, a field (so "$a.access_token." ends at the field).
    idpattern = r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*"
    # Braced: any configured token name (letters, digits, '.', '_', '-'), then '.' and a field.
    braceidpattern = r"[a-z0-9][a-z0-9_.-]*\.[a-z_][a-z0-9_]*"


def split_placeholder(identifier: str) -> tuple[str, str]:
    """``"a.b.oid"`` → ``("a.b", "oid")``: the field is what follows the last dot."""
    token, _, field = identifier.rpartition(".")
    return token, field


def check_file_template(text: str, tokens: Collection[str]) -> tuple[list[str], list[str]]:
    """(problems, tokens named) of a ``[file.NAME]`` template; ``tokens`` are the configured
    token names. Each problem is one line naming the placeholder, e.g. ``unknown field 'nope'
    in ${a.nope}``; an empty template is one."""
    if not text.strip():
        return ['is empty; a template must write something (e.g. "${TOKEN.access_token}")'], []
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
        token, field = split_placeholder(identifier)
        if token not in tokens:
            known = ", ".join(sorted(tokens)) or "none configured"
            problems.append(f"unknown token '{token}' in ${{{identifier}}} (tokens: {known})")
        elif field not in TEMPLATE_FIELDS:
            problems.append(
                f"unknown field '{field}' in ${{{identifier}}} "
                f"(fields: {', '.join(TEMPLATE_FIELDS)})"
            )
        elif token not in named:
            named.append(token)
    return problems, named
