"""The emulator's certificates: its CA, server certificates signed by it, self-signed roots.

Three users: the emulator's own HTTPS listener (``make_tls``), the registry certificates a
test hands to a real ``docker-registry`` (``issue_server_files``, same CA, so one ``ca.pem``
covers the emulator, the token realm and the registry), and the identity-binding proxy, which
has a CA of its own that rotates (``make_ca`` + ``issue_leaf`` with P-256 keys).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from entra_tokend.emulator._crypto import (
    load_or_create_ec_key,
    load_or_create_key,
    private_pem,
    write_private,
    write_public,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
CA_NAME = "entra-tokend emulator CA"


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the generated CA certificate and a server's certificate and key (PEM)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _same_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def make_ca(key: PrivateKey, common_name: str, *, days: int = 3650) -> x509.Certificate:
    """A self-signed CA certificate for ``key`` (path length 0: it signs leaves only)."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def issue_leaf(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    key: PrivateKey,
    *,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 365,
) -> x509.Certificate:
    """A TLS server certificate for ``key`` naming exactly ``dns_names`` and ``ips``."""
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    common = dns_names[0] if dns_names else (ips[0] if ips else "emulator")
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def self_signed(key: PrivateKey, common_name: str, *, days: int = 3650) -> x509.Certificate:
    """A self-signed certificate carrying ``key`` (a registry's ``rootcertbundle`` entry)."""
    return make_ca(key, common_name, days=days)


def ensure_ca(directory: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    """The CA in ``directory`` (``ca-key.pem``, ``ca.pem``), created or renewed when needed."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = load_or_create_key(directory / "ca-key.pem", "ca")
    ca_path = directory / "ca.pem"
    now = dt.datetime.now(dt.UTC)
    if ca_path.exists():
        candidate = x509.load_pem_x509_certificate(ca_path.read_bytes())
        if _same_key(candidate, ca_key) and candidate.not_valid_after_utc > now + dt.timedelta(
            days=1
        ):
            return ca_key, candidate, ca_path
    ca_cert = make_ca(ca_key, CA_NAME)
    write_public(ca_path, pem(ca_cert))
    return ca_key, ca_cert, ca_path


def make_tls(directory: Path) -> TlsFiles:
    """Create (or reuse) a CA in ``directory`` and issue a fresh server certificate from it.

    The server certificate names 127.0.0.1, ::1 and localhost, which covers every address
    the emulator may listen on (it binds loopback only unless told otherwise).
    """
    ca_key, ca_cert, ca_path = ensure_ca(directory)
    server_key = load_or_create_key(directory / "server-key.pem", "server")
    cert = issue_leaf(
        ca_key, ca_cert, server_key, dns_names=["localhost"], ips=["127.0.0.1", "::1"]
    )
    server_cert_path = directory / "server.pem"
    write_public(server_cert_path, pem(cert))
    return TlsFiles(ca_path, server_cert_path, directory / "server-key.pem")


def issue_server_files(
    ca_dir: Path, directory: Path, *, dns_names: Sequence[str], ips: Sequence[str]
) -> TlsFiles:
    """A server certificate and P-256 key in ``directory``, signed by the CA in ``ca_dir``."""
    ca_key, ca_cert, ca_path = ensure_ca(ca_dir)
    key = load_or_create_ec_key(directory / "key.pem", f"server:{directory}")
    cert = issue_leaf(ca_key, ca_cert, key, dns_names=dns_names, ips=ips)
    write_public(directory / "cert.pem", pem(cert))
    write_private(directory / "key.pem", private_pem(key))
    return TlsFiles(ca_path, directory / "cert.pem", directory / "key.pem")
