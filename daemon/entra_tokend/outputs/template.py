"""``format = "template"``: a user template rendered with the token's fields.

The engine is the standard library's ``string.Template`` (PEP 292): ``$name`` / ``${name}``
substitution and ``$$`` for a dollar sign, nothing else — no expressions, attribute access or
code, so a template cannot run anything. Fields (``FIELDS``): ``access_token``, ``expires_on``
(unix seconds), ``expires_on_rfc3339`` (UTC), ``token_type``, ``scope``, ``resource`` (the
scope without ``/.default``), ``tenant_id``, ``client_id``, ``token_name``; and the token's
claims ``oid``, ``tid``, ``appid``, ``azp``, ``aud``, ``exp``, ``iat`` (``claims``: decoded only
when the template uses one).

``check`` runs at configuration load: a syntax error, an unknown field or an empty template is
a configuration error there. At run time only a claim the token lacks (an opaque token) fails
a render (``claims.MissingClaim``): the file is not written, and its runner reports a
configuration-type write error.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from datetime import UTC, datetime

from entra_tokend.model import AccessToken, OutputSpec
from entra_tokend.outputs.claims import claim_values
from entra_tokend.util.formats import CLAIM_FIELDS
from entra_tokend.util.formats import TEMPLATE_FIELDS as FIELDS
from entra_tokend.util.formats import check_template as check

__all__ = ["FIELDS", "check", "fields", "renderer"]


def fields(token: AccessToken, token_name: str) -> dict[str, str]:
    """The values a template may use."""
    return {
        "access_token": token.token,
        "expires_on": str(int(token.expires_on)),
        "expires_on_rfc3339": datetime.fromtimestamp(int(token.expires_on), UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "token_type": token.token_type,
        "scope": token.scope,
        "resource": token.scope.removesuffix("/.default"),
        "tenant_id": token.tenant_id,
        "client_id": token.client_id,
        "token_name": token_name,
    }


def renderer(spec: OutputSpec) -> Callable[[AccessToken], bytes]:
    """The renderer of ``spec.template`` (checked at load time with ``check``)."""
    template = string.Template(spec.template or "")
    claims = [name for name in template.get_identifiers() if name in CLAIM_FIELDS]

    def render(token: AccessToken) -> bytes:
        """The rendered template, UTF-8. Raises ``claims.MissingClaim``."""
        values = fields(token, spec.name)
        values.update(claim_values(token, claims))
        return template.substitute(values).encode()

    return render
