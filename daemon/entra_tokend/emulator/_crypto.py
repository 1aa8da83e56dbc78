"""Keys and JOSE: RS256 (cluster issuer, Entra) and ES256 (registry tokens), base64url, files.

Generating a 2048-bit RSA key costs tens of milliseconds, so keys are cached per process and
per role; a state directory that already holds a role's key reuses it (a restarted CLI keeps
its cluster signing key, so files written earlier stay valid). P-256 keys are cheap and are
used wherever the protocol allows (registry tokens, the identity-binding proxy's PKI).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

_RSA_CACHE: dict[str, rsa.RSAPrivateKey] = {}
_EC_CACHE: dict[str, ec.EllipticCurvePrivateKey] = {}
_KEY_LOCK = threading.Lock()


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE wants it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url; raises ``ValueError`` on bad input."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A compact JWS's header and claims, unverified; ``ValueError`` when malformed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("JWS header and payload must be JSON objects")
    return header, claims


def _compact(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )


def cached_key(role: str) -> rsa.RSAPrivateKey:
    """A process-wide RSA key for ``role``, generated on first use."""
    with _KEY_LOCK:
        key = _RSA_CACHE.get(role)
        if key is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _RSA_CACHE[role] = key
        return key


def cached_ec_key(role: str) -> ec.EllipticCurvePrivateKey:
    """A process-wide P-256 key for ``role``, generated on first use."""
    with _KEY_LOCK:
        key = _EC_CACHE.get(role)
        if key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            _EC_CACHE[role] = key
        return key


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of ``key``, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_or_create_key(path: Path, role: str) -> rsa.RSAPrivateKey:
    """The RSA key stored at ``path``, or the process's cached key for ``role`` written there."""
    if path.exists():
        # Our own file: skip the RSA consistency checks, which cost ~50 ms per load.
        loaded = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
        if isinstance(loaded, rsa.RSAPrivateKey):
            return loaded
    key = cached_key(role)
    write_private(path, private_pem(key))
    return key


def load_or_create_ec_key(path: Path, role: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 key stored at ``path``, or the process's cached key for ``role`` written there."""
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(loaded, ec.EllipticCurvePrivateKey):
            return loaded
    key = cached_ec_key(role)
    write_private(path, private_pem(key))
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, replacing any previous file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    """Write a world-readable file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class SigningKey:
    """An RSA key with its JOSE key id (RS256)."""

    private: rsa.RSAPrivateKey

    @property
    def kid(self) -> str:
        """Key id: base64url SHA-256 of the public key's DER, as kube-apiserver derives it."""
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return b64url(hashlib.sha256(der).digest())

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK."""
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": _int_b64(numbers.n),
            "e": _int_b64(numbers.e),
        }

    def sign_jwt(self, claims: dict[str, Any], extra_header: dict[str, str] | None = None) -> str:
        """An RS256 compact JWS of ``claims``."""
        header: dict[str, str] = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        if extra_header:
            header.update(extra_header)
        signing_input = _compact(header, claims)
        signature = self.private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)

    def verify_jwt(self, token: str) -> bool:
        """True when ``token`` is an RS256 JWS signed by this key."""
        parts = token.split(".")
        if len(parts) != 3:
            return False
        try:
            header = json.loads(b64url_decode(parts[0]))
            signature = b64url_decode(parts[2])
        except ValueError:
            return False
        if not isinstance(header, dict) or header.get("alg") != "RS256":
            return False
        try:
            self.private.public_key().verify(
                signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return False
        return True


def libtrust_key_id(public: ec.EllipticCurvePublicKey) -> str:
    """The key id the CNCF distribution registry derives for a token-signing key.

    libtrust's fingerprint: SHA-256 of the DER SubjectPublicKeyInfo, the first 30 bytes,
    base32 without padding, in 12 groups of 4 characters joined by ``:`` (the recipe measured
    against docker-registry 2.8.2, see shared/notes/real-tools.md).
    """
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


@dataclass(frozen=True)
class EcSigningKey:
    """A P-256 key signing ES256 JWTs; ``kid`` is its libtrust fingerprint."""

    private: ec.EllipticCurvePrivateKey

    @property
    def kid(self) -> str:
        """The libtrust key id distribution matches against its ``rootcertbundle``."""
        return libtrust_key_id(self.private.public_key())

    def sign_jwt(self, claims: dict[str, Any]) -> str:
        """An ES256 compact JWS; the signature is raw ``r || s`` (RFC 7518 section 3.4)."""
        signing_input = _compact({"typ": "JWT", "alg": "ES256", "kid": self.kid}, claims)
        der = self.private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def verify_jwt(self, token: str) -> bool:
        """True when ``token`` is an ES256 JWS signed by this key."""
        parts = token.split(".")
        if len(parts) != 3:
            return False
        try:
            header = json.loads(b64url_decode(parts[0]))
            raw = b64url_decode(parts[2])
        except ValueError:
            return False
        if not isinstance(header, dict) or header.get("alg") != "ES256" or len(raw) != 64:
            return False
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        try:
            self.private.public_key().verify(
                der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            return False
        return True
