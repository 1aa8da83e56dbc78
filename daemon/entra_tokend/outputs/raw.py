"""``format = "raw"``: the bare access token, no trailing newline.

For ``Authorization: Bearer $(cat file)`` and Prometheus ``credentials_file``, which use the
file's bytes as they are.
"""

from __future__ import annotations

from entra_tokend.model import AccessToken


def render(token: AccessToken) -> bytes:
    """The token's bytes (ASCII: the exchange rejects tokens with whitespace or controls)."""
    return token.token.encode()
