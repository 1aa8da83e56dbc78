"""The emulator's ACR token service over real HTTPS: exchange, token (form, chunked, Basic),
the /v2/ challenge, faults and records."""

from __future__ import annotations

import base64
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509

from entra_tokend.emulator import Emulator, Fault
from support.emulator import ca_context, jwt_parts, tls_emulator_fixture  # noqa: F401 - fixture
from support.registry import ACR_NULL_USER, acr_refresh_token, entra_token

REG_A = "127.0.0.1:5501"
REG_B = "127.0.0.1:5502"


@pytest.fixture(name="acr_emu")
def acr_emu_fixture(tls_emulator: Emulator) -> Emulator:
    """A TLS emulator serving two registries."""
    tls_emulator.add_registry(REG_A)
    tls_emulator.add_registry(REG_B)
    return tls_emulator


@pytest.fixture(name="tls_client")
def tls_client_fixture(tls_emulator: Emulator) -> Iterator[httpx.Client]:
    """A client trusting only the emulator's CA."""
    with httpx.Client(verify=ca_context(tls_emulator), trust_env=False, timeout=10) as c:
        yield c


def _exchange(c: httpx.Client, emu: Emulator, **form: str) -> httpx.Response:
    data = {"grant_type": "access_token", "service": REG_A, "tenant": emu.tenant_id}
    data.update(form)
    if "access_token" not in data:
        data["access_token"] = entra_token(c, emu)
    return c.post(emu.acr_exchange_url, data=data)


def _assert_acr_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["errors"][0]["code"] == code
    uuid.UUID(resp.headers["x-ms-correlation-request-id"])


def test_exchange_answers_a_refresh_token_and_records_it(
    acr_emu: Emulator, tls_client: httpx.Client
) -> None:
    resp = _exchange(tls_client, acr_emu)
    assert resp.status_code == 200
    assert set(resp.json()) == {"refresh_token"}
    refresh = resp.json()["refresh_token"]
    assert acr_emu.issued_acr_refresh_tokens == [refresh]
    claims = jwt_parts(refresh)[1]
    assert claims["aud"] == REG_A
    assert claims["tenant"] == acr_emu.tenant_id
    (rec,) = acr_emu.acr_requests()
    assert (rec.method, rec.path, rec.status, rec.endpoint) == (
        "POST",
        "/oauth2/exchange",
        200,
        "acr_exchange",
    )
    assert rec.form["service"] == REG_A
    assert rec.server_name is None  # an IP address is never sent as SNI
    assert refresh not in repr(rec)


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("token for another resource", 401, "UNAUTHORIZED"),
        ("not a token", 401, "UNAUTHORIZED"),
        ("another tenant", 401, "UNAUTHORIZED"),
        ("unknown registry", 400, "UNSUPPORTED"),
        ("no grant type", 400, "UNSUPPORTED"),
    ],
)
def test_exchange_errors_have_acrs_shape(
    acr_emu: Emulator, tls_client: httpx.Client, case: str, status: int, code: str
) -> None:
    form: dict[str, str] = {
        "token for another resource": {
            "access_token": entra_token(tls_client, acr_emu, "https://vault.azure.net/.default")
        },
        "not a token": {"access_token": "abc.def.ghi"},
        "another tenant": {"tenant": str(uuid.uuid4())},
        "unknown registry": {"service": "127.0.0.1:1"},
        "no grant type": {"grant_type": ""},
    }[case]
    _assert_acr_error(_exchange(tls_client, acr_emu, **form), status, code)
    assert acr_emu.issued_acr_refresh_tokens == []


def test_exchange_is_post_only_and_denied_without_a_role(
    acr_emu: Emulator, tls_client: httpx.Client
) -> None:
    assert tls_client.get(acr_emu.acr_exchange_url).status_code == 404
    acr_emu.grant_registry_access(REG_A, "*", None)
    _assert_acr_error(_exchange(tls_client, acr_emu), 403, "DENIED")
    assert _exchange(tls_client, acr_emu, service=REG_B).status_code == 200


def _post_chunked(emu: Emulator, body: bytes) -> bytes:
    """POST ``body`` to /oauth2/token with chunked framing and no Content-Length, as skopeo
    does; return the raw answer."""
    url = urlsplit(emu.registry_realm)
    ctx = ssl.create_default_context(cafile=str(emu.ca_file))
    with (
        socket.create_connection((url.hostname or "", url.port or 443), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=url.hostname) as sock,
    ):
        head = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ).encode()
        half = len(body) // 2
        chunks = b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:])
        )
        sock.sendall(head + chunks + b"0\r\n\r\n")
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


def test_token_from_a_chunked_form(acr_emu: Emulator, tls_client: httpx.Client) -> None:
    refresh = acr_refresh_token(tls_client, acr_emu, REG_A)
    body = httpx.QueryParams(
        [
            ("grant_type", "refresh_token"),
            ("service", REG_A),
            ("scope", "repository:team/app:pull,push"),
            ("scope", "repository:base:pull"),
            ("refresh_token", refresh),
            ("client_id", "containers/image"),
        ]
    )
    answer = _post_chunked(acr_emu, str(body).encode())
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    token = httpx.Response(200, content=payload).json()["token"]
    header, claims = jwt_parts(token)
    assert header["alg"] == "ES256"
    assert len(header["kid"].split(":")) == 12
    assert claims["aud"] == REG_A
    assert [a["name"] for a in claims["access"]] == ["team/app", "base"]
    (rec,) = [r for r in acr_emu.acr_requests() if r.endpoint == "acr_token"]
    assert rec.form["scope"] == "repository:team/app:pull,push repository:base:pull"


def test_token_with_basic_auth_as_skopeo_sends_it(
    acr_emu: Emulator, tls_client: httpx.Client
) -> None:
    refresh = acr_refresh_token(tls_client, acr_emu, REG_B)
    params = {"account": ACR_NULL_USER, "scope": "repository:app:pull", "service": REG_B}
    ok = tls_client.get(acr_emu.registry_realm, params=params, auth=(ACR_NULL_USER, refresh))
    assert ok.status_code == 200
    body: dict[str, Any] = ok.json()
    assert body["token"] == body["access_token"]
    assert jwt_parts(body["token"])[1]["access"] == [
        {"type": "repository", "name": "app", "actions": ["pull"]}
    ]
    assert acr_emu.issued_registry_tokens == [body["token"]]
    for auth in [None, ("admin", refresh)]:
        denied = tls_client.get(acr_emu.registry_realm, params=params, auth=auth)
        _assert_acr_error(denied, 401, "UNAUTHORIZED")
    # A refresh token is bound to its registry.
    other = {**params, "service": REG_A}
    _assert_acr_error(
        tls_client.get(acr_emu.registry_realm, params=other, auth=(ACR_NULL_USER, refresh)),
        401,
        "UNAUTHORIZED",
    )
    rec = next(r for r in acr_emu.acr_requests() if r.method == "GET")
    assert rec.query["service"] == REG_B
    assert refresh not in repr(rec)
    assert base64.b64encode(f"{ACR_NULL_USER}:{refresh}".encode()).decode() in str(
        rec.headers["authorization"]
    )


def test_v2_challenge_points_at_the_realm(acr_emu: Emulator, tls_client: httpx.Client) -> None:
    resp = tls_client.get(f"{acr_emu.authority_host}/v2/", headers={"Host": REG_B})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == (
        f'Bearer realm="{acr_emu.registry_realm}",service="{REG_B}"'
    )
    assert resp.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_faults_target_acr_endpoints_only(acr_emu: Emulator, tls_client: httpx.Client) -> None:
    acr_emu.inject(
        Fault("status", status=429, retry_after="4", target="acr_exchange"),
        Fault("status", status=503, target="acr_token"),
    )
    # The Entra token request is not affected by the ACR faults.
    access = entra_token(tls_client, acr_emu)
    throttled = _exchange(tls_client, acr_emu, access_token=access)
    _assert_acr_error(throttled, 429, "TOOMANYREQUESTS")
    assert throttled.headers["retry-after"] == "4"
    refresh_resp = _exchange(tls_client, acr_emu, access_token=access)
    assert refresh_resp.status_code == 200
    auth = (ACR_NULL_USER, refresh_resp.json()["refresh_token"])
    params = {"service": REG_A, "scope": "repository:x:pull"}
    assert tls_client.get(acr_emu.registry_realm, params=params, auth=auth).status_code == 503
    assert tls_client.get(acr_emu.registry_realm, params=params, auth=auth).status_code == 200
    assert [r.status for r in acr_emu.acr_requests()] == [429, 200, 503, 200]
    assert [r.status for r in acr_emu.token_requests()] == [200]


def test_acr_reset_fault_and_refresh_lifetime_via_admin(
    acr_emu: Emulator, tls_client: httpx.Client
) -> None:
    admin = f"{acr_emu.authority_host}/_admin"
    resp = tls_client.post(f"{admin}/faults", json={"kind": "reset", "target": "acr_exchange"})
    assert resp.json() == {"queued": 1, "pending_faults": 1}
    with pytest.raises(httpx.TransportError):
        _exchange(tls_client, acr_emu)
    assert tls_client.post(f"{admin}/acr-lifetime", json={"seconds": 600}).status_code == 200
    before = time.time()
    claims = jwt_parts(_exchange(tls_client, acr_emu).json()["refresh_token"])[1]
    assert claims["exp"] - claims["iat"] == 600
    assert claims["iat"] >= int(before)
    assert tls_client.post(f"{admin}/acr-lifetime", json={"seconds": 0}).status_code == 400


def test_revoked_refresh_tokens_stop_working(acr_emu: Emulator, tls_client: httpx.Client) -> None:
    refresh = acr_refresh_token(tls_client, acr_emu, REG_A)
    params = {"service": REG_A, "scope": "repository:x:pull"}
    auth = (ACR_NULL_USER, refresh)
    assert tls_client.get(acr_emu.registry_realm, params=params, auth=auth).status_code == 200
    acr_emu.revoke_acr_refresh_tokens(REG_A)
    assert tls_client.get(acr_emu.registry_realm, params=params, auth=auth).status_code == 401


def test_registry_setup_gives_a_real_registry_what_it_needs(
    acr_emu: Emulator, tmp_path: Path
) -> None:
    setup = acr_emu.add_registry("127.0.0.1:5503")
    config = setup.distribution_config(tmp_path / "storage")
    assert config["auth"]["token"] == {
        "realm": acr_emu.registry_realm,
        "service": "127.0.0.1:5503",
        "issuer": "Azure Container Registry",
        "rootcertbundle": str(setup.rootcertbundle),
    }
    assert config["http"]["addr"] == "127.0.0.1:5503"
    assert setup.ca_file == acr_emu.ca_file
    # The registry's certificate is issued by the emulator's CA and names 127.0.0.1.
    ca = x509.load_pem_x509_certificate(setup.ca_file.read_bytes())
    cert = x509.load_pem_x509_certificate(setup.tls_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
