"""Helpers for the emulator's own tests: token requests, JWT decoding, JWKS verification,
the environment of a clean subprocess and what a real shell exports from an env file."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from entra_tokend.emulator import Emulator

# Fixtures live here rather than in a conftest.py (a second module named ``conftest`` would
# shadow the one other tests import helpers from); test modules import the *_fixture names.


@pytest.fixture(name="client")
def client_fixture() -> Iterator[httpx.Client]:
    """A keep-alive HTTP client that ignores proxy settings."""
    with httpx.Client(trust_env=False, timeout=10) as c:
        yield c


@pytest.fixture(name="tls_emulator")
def tls_emulator_fixture(tmp_path: Path) -> Iterator[Emulator]:
    """A running emulator serving HTTPS with its generated CA."""
    with Emulator(tmp_path / "tls-emulator", tls=True) as emu:
        yield emu


REPO = Path(__file__).resolve().parents[2]
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "https://vault.azure.net/.default"


def token_form(
    emu: Emulator, assertion: str | None = None, **overrides: str | None
) -> dict[str, str]:
    """A valid client-credentials form for ``emu``; ``overrides`` set (or with None drop) fields."""
    form: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_id": emu.client_id,
        "scope": SCOPE,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion if assertion is not None else emu.token_file.read_text(),
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def post_token(
    client: httpx.Client, emu: Emulator, form: dict[str, str], tenant: str | None = None
) -> httpx.Response:
    """POST ``form`` to the emulator's token endpoint (for ``tenant``, default its own)."""
    url = f"{emu.authority_host}/{tenant or emu.tenant_id}/oauth2/v2.0/token"
    return client.post(url, data=form)


def ca_context(emu: Emulator) -> ssl.SSLContext:
    """A client context trusting only ``emu``'s generated CA (fails the test without one)."""
    ctx = emu.client_ssl_context()
    assert ctx is not None, "emulator is not serving TLS"
    return ctx


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's header and claims, unverified."""
    head, body, _sig = token.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(body))


def verify_with_jwks(token: str, jwks: dict[str, Any]) -> bool:
    """True when ``token``'s RS256 signature verifies with the JWKS key its ``kid`` names."""
    header, _ = jwt_parts(token)
    keys = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    if len(keys) != 1:
        return False
    n = int.from_bytes(b64url_decode(keys[0]["n"]), "big")
    e = int.from_bytes(b64url_decode(keys[0]["e"]), "big")
    public = rsa.RSAPublicNumbers(e, n).public_key()
    head, body, sig = token.split(".")
    try:
        public.verify(
            b64url_decode(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except Exception:
        return False
    return True


def assert_entra_error(resp: httpx.Response, status: int, error: str, code: int) -> dict[str, Any]:
    """Assert ``resp`` is Entra's error shape with this status, error and AADSTS code."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    desc = body["error_description"]
    assert desc.startswith(f"AADSTS{code}: ")
    assert f"\r\nTrace ID: {body['trace_id']}\r\nCorrelation ID: {body['correlation_id']}" in desc
    assert f"\r\nTimestamp: {body['timestamp']}" in desc
    assert len(body["trace_id"]) == 36
    assert len(body["correlation_id"]) == 36
    return body


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without Azure/TLS/proxy settings, with daemon/ importable."""
    drop = ("AZURE_", "SSL_CERT", "REQUESTS_CA", "HTTPS_PROXY", "HTTP_PROXY", "https_", "http_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(REPO / "daemon")
    env.update(extra or {})
    return env


def sourced(env_file: Path) -> dict[str, str]:
    """What ``set -a; . FILE`` exports, read back from a real bash."""
    script = (
        'set -a; . "$1"; set +a; python3 -c "import json,os; print(json.dumps(dict(os.environ)))"'
    )
    out = subprocess.run(
        ["bash", "-c", script, "bash", str(env_file)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    loaded: dict[str, str] = json.loads(out)
    return loaded
