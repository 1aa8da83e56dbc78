"""The output formats' names and the pure checks of their settings, for ``config`` (which must
not import ``outputs``: that package pulls in the atomic writer). ``outputs`` renders with them.
"""

from __future__ import annotations

import re
import string

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
)
"""The ``$fields`` a ``format = "template"`` template may use."""


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
