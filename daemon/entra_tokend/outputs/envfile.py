"""``format = "env"``: ``NAME=value`` lines for ``set -a; . file``, systemd ``EnvironmentFile=``
and ``docker --env-file``.

Two lines: ``<env_name>=<access token>`` and ``<env_expires_name>=<expires_on, unix seconds>``.
Values are written unquoted because ``docker --env-file`` keeps quotes as part of the value;
that is safe only for values made of characters none of the three parsers treat specially, so
the renderer refuses any other token (``UnsafeValue``) instead of writing a file a shell would
interpret. JWTs (base64url and dots) always pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from entra_tokend.model import AccessToken, OutputSpec

SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9._~+/=:@%,-]+$")
"""Characters that mean nothing to a POSIX shell, systemd or docker in an unquoted value."""


class UnsafeValue(ValueError):
    """The token holds a character that cannot be written unquoted (the text names no secret)."""


def renderer(spec: OutputSpec) -> Callable[[AccessToken], bytes]:
    """The renderer for ``spec``'s variable names."""

    def render(token: AccessToken) -> bytes:
        """The two lines. Raises ``UnsafeValue`` for a token that needs quoting."""
        if not SAFE_VALUE_RE.match(token.token):
            raise UnsafeValue("the access token has characters an env file cannot hold unquoted")
        return (
            f"{spec.env_name}={token.token}\n{spec.env_expires_name}={int(token.expires_on)}\n"
        ).encode()

    return render
