"""The projected service-account token: reading it and its unverified claims.

The daemon never verifies the assertion's signature (Entra does); it only reads the claims
it needs to schedule and to explain failures: ``exp``, ``iat``, ``iss``, ``sub``, ``aud``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from entra_tokend.model import Reason
from entra_tokend.ports import Failure
from entra_tokend.util import jwt
from entra_tokend.util.files import FileTooLarge, NotRegularFile, read_regular

# A projected token is a few KiB; anything far larger is not one.
MAX_ASSERTION_BYTES = 64 * 1024
_TOO_LARGE = (
    f"token file is larger than {MAX_ASSERTION_BYTES} bytes; a projected token is far smaller"
)


class AssertionUnavailable(Failure):
    """No usable assertion: the file is missing, unreadable, malformed or expired."""

    reason = Reason.ASSERTION_UNAVAILABLE
    kind = "unavailable"


class AssertionMissing(AssertionUnavailable):
    """The token file does not exist (yet)."""

    kind = "missing"


class AssertionMalformed(AssertionUnavailable):
    """The token file exists but does not hold a JWT."""

    kind = "malformed"


class AssertionExpired(AssertionUnavailable):
    """The only assertion on disk has expired; sending it would only earn AADSTS700024."""

    kind = "expired"


@dataclass(frozen=True)
class Assertion:
    """One version of the projected token. ``repr`` never shows the token itself."""

    token: str = field(repr=False)
    fingerprint: str
    expires_on: float | None
    issued_at: float | None
    iss: str | None
    sub: str | None
    aud: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """Claims safe to log: what a federated credential is matched against."""
        return {"iss": self.iss, "sub": self.sub, "aud": list(self.aud), "exp": self.expires_on}


def decode_claims(token: str) -> dict[str, Any]:
    """Return a JWT's payload without verifying it. Raises AssertionMalformed."""
    try:
        return jwt.decode_claims(token)
    except jwt.MalformedJWT as exc:
        raise AssertionMalformed(f"token file {exc}") from None


# Claims are unix seconds; beyond year 9999 (or negative) no clock or datetime can represent
# them, so such a token is malformed rather than a crash waiting in a log line.
MAX_TIMESTAMP = 253402300799.0


def _number(value: Any, claim: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not 0 <= number <= MAX_TIMESTAMP:
        raise AssertionMalformed(f"token file holds a JWT whose {claim} claim is out of range")
    return number


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_assertion(content: bytes) -> Assertion:
    """Parse a token file's bytes into an Assertion. Raises AssertionMalformed."""
    if len(content) > MAX_ASSERTION_BYTES:
        raise AssertionMalformed(_TOO_LARGE)
    try:
        token = content.decode("ascii").strip()
    except UnicodeDecodeError:
        raise AssertionMalformed("token file holds non-ASCII bytes, not a JWT") from None
    if not token:
        raise AssertionMalformed("token file is empty")
    claims = decode_claims(token)
    aud = claims.get("aud")
    audiences = (
        (aud,) if isinstance(aud, str) else tuple(a for a in aud or () if isinstance(a, str))
    )
    return Assertion(
        token=token,
        fingerprint=hashlib.sha256(token.encode()).hexdigest(),
        expires_on=_number(claims.get("exp"), "exp"),
        issued_at=_number(claims.get("iat"), "iat"),
        iss=_string(claims.get("iss")),
        sub=_string(claims.get("sub")),
        aud=audiences if isinstance(aud, str | list) else (),
    )


def read_assertion(path: Path) -> Assertion:
    """Read and parse the projected token at ``path`` (following kubelet's symlinks).

    Only a regular file is read, opened non-blocking: a FIFO or a device planted at the path
    is reported, never waited on (a blocked read would stall the event loop). Raises
    ``AssertionUnavailable`` (``AssertionMissing``, ``AssertionMalformed``).
    """
    try:
        content = read_regular(path, MAX_ASSERTION_BYTES)
    except FileNotFoundError:
        raise AssertionMissing(f"projected token file {path} does not exist") from None
    except NotRegularFile as exc:
        what = "is a directory" if exc.is_directory else "is not a regular file"
        raise AssertionMalformed(f"projected token path {path} {what}") from None
    except FileTooLarge:
        raise AssertionMalformed(_TOO_LARGE) from None
    except OSError as exc:
        raise AssertionUnavailable(
            f"cannot read projected token file {path}: {exc.strerror}"
        ) from None
    return parse_assertion(content)


def check_unexpired(assertion: Assertion, now: float, path: Path) -> None:
    """Raise AssertionExpired when the assertion's ``exp`` has passed."""
    if assertion.expires_on is not None and assertion.expires_on <= now:
        when = datetime.fromtimestamp(assertion.expires_on, UTC).isoformat()
        raise AssertionExpired(
            f"projected token {path} expired at {when}; is kubelet refreshing it?"
        )
