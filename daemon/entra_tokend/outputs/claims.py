"""The claims of an issued access token that templates may use, read from its JWT payload.

The payload is decoded without verifying the signature: the token came from Entra over TLS
and is delivered as it is; its claims are only *copied* into a file, never trusted for a
decision. Fields (``CLAIM_FIELDS``), each as text:

- ``oid``, ``tid`` — the object id of the identity (e.g. Azure Cache for Redis' user name) and
  the tenant id, as the token states them;
- ``appid`` and ``azp`` — the client's application id: v1 tokens carry ``appid``, v2 tokens
  ``azp``; each field falls back to the other claim, so both work with either version;
- ``aud`` — the audience (a list is joined with ``,``);
- ``exp``, ``iat`` — expiry and issue time, unix seconds (integers).

A token whose payload cannot be read (an opaque or encrypted token) or that lacks a claim a
template uses raises ``MissingClaim``: the caller writes no file rather than one with an empty
or wrong value. So does a claim holding whitespace, control characters or more than
``MAX_CLAIM_CHARS`` characters, which could otherwise add lines to an env or properties file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from entra_tokend.model import AccessToken
from entra_tokend.util.formats import CLAIM_FIELDS
from entra_tokend.util.jwt import MalformedJWT, decode_claims

__all__ = ["CLAIM_FIELDS", "MAX_CLAIM_CHARS", "MissingClaim", "claim_values"]

MAX_CLAIM_CHARS = 1024
"""Characters: a longer claim value is refused (no identifier, audience or time is that long)."""

_FALLBACK = {"appid": ("appid", "azp"), "azp": ("azp", "appid")}


class MissingClaim(ValueError):
    """A claim a template uses cannot be read from the token. The text names the claim and
    why; it never holds the token or a claim's value."""


def _text(name: str, value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MissingClaim(f"the access token has no usable '{name}' claim")
    text = str(int(value)) if isinstance(value, int | float) else value
    if not text or len(text) > MAX_CLAIM_CHARS or any(c.isspace() for c in text):
        raise MissingClaim(f"the access token's '{name}' claim is empty, too long or has spaces")
    if not text.isprintable():
        raise MissingClaim(f"the access token's '{name}' claim holds control characters")
    return text


def claim_values(token: AccessToken, names: Iterable[str]) -> dict[str, str]:
    """``{field: text}`` for each of ``names`` (members of ``CLAIM_FIELDS``). Raises
    ``MissingClaim`` when the token is no JWT or a claim is absent or unusable."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    try:
        claims = decode_claims(token.token)
    except MalformedJWT:
        raise MissingClaim(
            "the access token is not a JWT (an opaque or encrypted token): its claims "
            "cannot be read"
        ) from None
    values: dict[str, str] = {}
    for name in wanted:
        value = next(
            (claims[c] for c in _FALLBACK.get(name, (name,)) if claims.get(c) is not None), None
        )
        values[name] = _text(name, value)
    return values
