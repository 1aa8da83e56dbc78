"""RSA keys, RS256 JWTs, JWKS and the emulator's CA: everything that needs ``cryptography``.

Generating a 2048-bit key costs tens of milliseconds, so keys are cached per process and
per role; a state directory that already holds a role's key reuses it (a restarted CLI keeps
its CA and its cluster signing key, so files written earlier stay valid).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEY_CACHE: dict[str, rsa.RSAPrivateKey] = {}
_KEY_LOCK = threading.Lock()


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE wants it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url; raises ``ValueError`` on bad input."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def cached_key(role: str) -> rsa.RSAPrivateKey:
    """A process-wide RSA key for ``role``, generated on first use."""
    with _KEY_LOCK:
        key = _KEY_CACHE.get(role)
        if key is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _KEY_CACHE[role] = key
        return key


def load_or_create_key(path: Path, role: str) -> rsa.RSAPrivateKey:
    """The key stored at ``path``, or the process's cached key for ``role`` written there."""
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(loaded, rsa.RSAPrivateKey):
            return loaded
    key = cached_key(role)
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
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
    """An RSA key with its JOSE key id."""

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
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
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


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the generated CA certificate and the server's certificate chain and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(directory: Path) -> TlsFiles:
    """Create (or reuse) a CA in ``directory`` and issue a fresh server certificate from it.

    The server certificate names 127.0.0.1, ::1 and localhost, which covers every address
    the emulator may listen on (it binds loopback only unless told otherwise).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = load_or_create_key(directory / "ca-key.pem", "ca")
    ca_path = directory / "ca.pem"
    now = dt.datetime.now(dt.UTC)
    ca_cert: x509.Certificate | None = None
    if ca_path.exists():
        candidate = x509.load_pem_x509_certificate(ca_path.read_bytes())
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        same_key = candidate.public_key().public_bytes(
            der, spki
        ) == ca_key.public_key().public_bytes(der, spki)
        if same_key and candidate.not_valid_after_utc > now + dt.timedelta(days=1):
            ca_cert = candidate
    if ca_cert is None:
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "entra-tokend emulator CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        write_public(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))

    server_key = load_or_create_key(directory / "server-key.pem", "server")
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_cert_path = directory / "server.pem"
    write_public(server_cert_path, server_cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(
        ca_cert=ca_path, server_cert=server_cert_path, server_key=directory / "server-key.pem"
    )
