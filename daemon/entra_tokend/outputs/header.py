"""``format = "header"``: one HTTP header line, ``Authorization: Bearer <token>`` and a newline.

For ``curl -H @file`` (curl reads one header per line from the file) and any client that takes
a header from a file.
"""

from __future__ import annotations

from entra_tokend.model import AccessToken

PREFIX = "Authorization: Bearer "


def render(token: AccessToken) -> bytes:
    """``Authorization: Bearer <token>\\n`` (ASCII). The scheme is always ``Bearer``: Entra's
    ``token_type`` is ``Bearer`` and RFC 6750 §2.1 spells the header this way."""
    return f"{PREFIX}{token.token}\n".encode()
