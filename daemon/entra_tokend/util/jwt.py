"""A JWT's claims, decoded without verifying its signature (the verifier is Entra)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class MalformedJWT(ValueError):
    """Not a JWT, or its payload is not a JSON object; the text says which, never the token."""


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode_claims(token: str) -> dict[str, Any]:
    """The payload of the compact JWT ``token`` as a dict. Raises MalformedJWT, whose text
    completes "token file ..." (e.g. "does not hold a JWT (expected three ...)")."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise MalformedJWT("does not hold a JWT (expected three dot-separated parts)")
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise MalformedJWT("holds a JWT whose payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise MalformedJWT("holds a JWT whose payload is not a JSON object")
    return claims
