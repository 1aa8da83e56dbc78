"""``format = "json"``: one JSON object with the token and what a consumer needs to use it.

Fields: ``access_token``, ``token_type``, ``expires_on`` (unix seconds, integer), ``scope``,
``tenant_id``, ``client_id``.
"""

from __future__ import annotations

import json

from entra_tokend.model import AccessToken


def render(token: AccessToken) -> bytes:
    """The compact JSON document (no trailing newline)."""
    doc = {
        "access_token": token.token,
        "token_type": token.token_type,
        "expires_on": int(token.expires_on),
        "scope": token.scope,
        "tenant_id": token.tenant_id,
        "client_id": token.client_id,
    }
    return json.dumps(doc, separators=(",", ":")).encode()
