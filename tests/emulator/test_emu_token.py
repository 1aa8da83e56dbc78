"""The emulated token endpoint: success answers and every validation error, over real HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from entra_tokend.emulator import Emulator
from support.emulator import (
    SCOPE,
    assert_entra_error,
    client_fixture,  # noqa: F401 - pytest fixtures
    jwt_parts,
    post_token,
    token_form,
    verify_with_jwks,
)


def test_success_answer_has_entras_shape_and_a_verifiable_jwt(
    emulator: Emulator, client: httpx.Client
) -> None:
    before = int(time.time())
    resp = post_token(client, emulator, token_form(emulator))
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3600
    token = body["access_token"]
    assert emulator.issued_tokens == [token]

    header, claims = jwt_parts(token)
    assert header["alg"] == "RS256"
    assert claims["aud"] == "https://vault.azure.net"
    assert claims["iss"] == f"https://sts.windows.net/{emulator.tenant_id}/"
    assert claims["tid"] == emulator.tenant_id
    assert claims["appid"] == emulator.client_id
    assert claims["sub"] == claims["oid"]
    uuid.UUID(claims["oid"])
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 3600

    jwks = client.get(f"{emulator.authority_host}/{emulator.tenant_id}/discovery/v2.0/keys").json()
    assert verify_with_jwks(token, jwks)
    # The cluster's key must not validate access tokens (two distinct issuers, two keys).
    cluster_jwks = client.get(f"{emulator.authority_host}/openid/v1/jwks").json()
    assert not verify_with_jwks(token, cluster_jwks)


def test_long_lifetime_adds_refresh_in_like_entra(emulator: Emulator, client: httpx.Client) -> None:
    emulator.access_token_lifetime = 7200
    body = post_token(client, emulator, token_form(emulator)).json()
    assert body["expires_in"] == 7200
    assert body["refresh_in"] == 3600
    emulator.access_token_lifetime = 7199
    assert "refresh_in" not in post_token(client, emulator, token_form(emulator)).json()


def test_requests_are_recorded_with_form_and_status(
    emulator: Emulator, client: httpx.Client
) -> None:
    post_token(client, emulator, token_form(emulator))
    post_token(client, emulator, token_form(emulator, scope="bad"))
    client.get(f"{emulator.authority_host}/openid/v1/jwks")
    reqs = emulator.token_requests()
    assert [r.status for r in reqs] == [200, 400]
    assert reqs[1].form["scope"] == "bad"
    assert reqs[0].headers["content-type"] == "application/x-www-form-urlencoded"
    assert len(emulator.requests) == 3
    # The assertion is in the record but never in its repr (pytest prints reprs on failure).
    assert reqs[0].form["client_assertion"] not in repr(reqs[0])
    assert emulator.wait_for_requests(2, timeout=0) == reqs


def test_wait_for_requests_times_out_with_a_count(emulator: Emulator) -> None:
    with pytest.raises(TimeoutError, match="saw 0 token requests, expected 1"):
        emulator.wait_for_requests(1, timeout=0.05)


def test_keep_alive_serves_many_requests_on_one_connection(
    emulator: Emulator, client: httpx.Client
) -> None:
    form = token_form(emulator)
    statuses = [post_token(client, emulator, form).status_code for _ in range(50)]
    assert statuses == [200] * 50
    peers = {r.peer for r in emulator.token_requests()}
    assert len(peers) == 1


# (name, mutate(emu) -> (form, tenant or None), status, error, code)
Case = tuple[str, Callable[[Emulator], tuple[dict[str, str], str | None]], int, str, int]


def _form(**kw: str | None) -> Callable[[Emulator], tuple[dict[str, str], str | None]]:
    return lambda emu: (token_form(emu, **kw), None)


def _assertion(**kw: Any) -> Callable[[Emulator], tuple[dict[str, str], str | None]]:
    return lambda emu: (token_form(emu, emu.issue_assertion(**kw)), None)


def _tampered(emu: Emulator) -> tuple[dict[str, str], str | None]:
    _, other_body, _ = emu.issue_assertion(subject="system:serviceaccount:x:y").split(".")
    head, _body, sig = emu.issue_assertion().split(".")
    return token_form(emu, f"{head}.{other_body}.{sig}"), None


CASES: list[Case] = [
    (
        "unknown tenant",
        lambda emu: (token_form(emu), str(uuid.uuid4())),
        400,
        "invalid_request",
        90002,
    ),
    ("no grant_type", _form(grant_type=None), 400, "invalid_request", 900144),
    ("wrong grant_type", _form(grant_type="password"), 400, "unsupported_grant_type", 70003),
    ("unknown client", _form(client_id=str(uuid.uuid4())), 400, "unauthorized_client", 700016),
    (
        "scope without .default",
        _form(scope="https://vault.azure.net/secrets.read"),
        400,
        "invalid_scope",
        1002012,
    ),
    (
        "two resources",
        _form(scope=f"{SCOPE} https://storage.azure.com/.default"),
        400,
        "invalid_scope",
        70011,
    ),
    ("no assertion", _form(client_assertion=None), 401, "invalid_client", 7000218),
    (
        "wrong assertion type",
        _form(client_assertion_type="urn:x:saml"),
        400,
        "invalid_request",
        90011,
    ),
    ("malformed assertion", _form(client_assertion="not-a-jwt"), 400, "invalid_request", 50027),
    ("unknown signing key", _assertion(untrusted_key=True), 401, "invalid_client", 7000272),
    ("bad signature", _tampered, 401, "invalid_client", 700027),
    ("expired assertion", _assertion(expired=True), 401, "invalid_client", 700024),
    (
        "assertion not yet valid",
        _assertion(not_before=time.time() + 3600),
        401,
        "invalid_client",
        700024,
    ),
    (
        "issuer mismatch",
        _assertion(issuer="https://oidc.example.com/"),
        401,
        "invalid_client",
        700211,
    ),
    (
        "subject mismatch",
        _assertion(subject="system:serviceaccount:default:other"),
        401,
        "invalid_client",
        700213,
    ),
    (
        "audience mismatch",
        _assertion(audience="api://SomethingElse"),
        401,
        "invalid_client",
        700212,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_validation_errors_use_entras_codes(
    emulator: Emulator, client: httpx.Client, case: Case
) -> None:
    _name, mutate, status, error, code = case
    form, tenant = mutate(emulator)
    resp = post_token(client, emulator, form, tenant)
    assert_entra_error(resp, status, error, code)
    assert emulator.issued_tokens == []
    # The same emulator still issues for a valid request: the failure was the request's.
    assert post_token(client, emulator, token_form(emulator)).status_code == 200


def test_mismatch_messages_name_the_presented_claims(
    emulator: Emulator, client: httpx.Client
) -> None:
    resp = post_token(
        client,
        emulator,
        token_form(emulator, emulator.issue_assertion(subject="system:serviceaccount:prod:api")),
    )
    assert "'system:serviceaccount:prod:api'" in resp.json()["error_description"]


def test_app_without_federated_credential_gets_70021(
    emulator: Emulator, client: httpx.Client
) -> None:
    emulator.add_app("11111111-2222-3333-4444-555555555555", federated=False)
    resp = post_token(
        client, emulator, token_form(emulator, client_id="11111111-2222-3333-4444-555555555555")
    )
    body = assert_entra_error(resp, 400, "invalid_request", 70021)
    assert f"Assertion Issuer: '{emulator.issuer}'" in body["error_description"]
    assert f"Assertion Subject: '{emulator.subject}'" in body["error_description"]


def test_second_app_with_its_own_credential(emulator: Emulator, client: httpx.Client) -> None:
    other = str(uuid.uuid4())
    emulator.add_app(other, subject="system:serviceaccount:team:job")
    ok = emulator.issue_assertion(subject="system:serviceaccount:team:job")
    assert (
        post_token(client, emulator, token_form(emulator, ok, client_id=other)).status_code == 200
    )
    # The default service account's token does not match the second app's credential.
    resp = post_token(client, emulator, token_form(emulator, client_id=other))
    assert_entra_error(resp, 401, "invalid_client", 700213)
    emulator.remove_app(other)
    resp = post_token(client, emulator, token_form(emulator, ok, client_id=other))
    assert_entra_error(resp, 400, "unauthorized_client", 700016)


def test_reject_current_assertion_until_rotation(emulator: Emulator, client: httpx.Client) -> None:
    assert post_token(client, emulator, token_form(emulator)).status_code == 200
    emulator.reject_current_assertion_as_expired()
    assert_entra_error(
        post_token(client, emulator, token_form(emulator)), 401, "invalid_client", 700024
    )
    emulator.rotate()
    assert post_token(client, emulator, token_form(emulator)).status_code == 200


def test_discovery_documents(emulator: Emulator, client: httpx.Client) -> None:
    base = emulator.authority_host
    tenant_doc = client.get(f"{base}/{emulator.tenant_id}/v2.0/.well-known/openid-configuration")
    assert tenant_doc.status_code == 200
    assert tenant_doc.json()["token_endpoint"] == emulator.token_endpoint
    assert client.get(tenant_doc.json()["jwks_uri"]).json()["keys"]
    unknown = client.get(f"{base}/{uuid.uuid4()}/v2.0/.well-known/openid-configuration")
    assert_entra_error(unknown, 400, "invalid_request", 90002)

    instance = client.get(f"{base}/common/discovery/instance", params={"api-version": "1.1"}).json()
    assert instance["tenant_discovery_endpoint"].startswith(base + "/")

    cluster = client.get(f"{base}/.well-known/openid-configuration").json()
    assert cluster["issuer"] == emulator.issuer
    jwks = client.get(cluster["jwks_uri"]).json()
    assert verify_with_jwks(emulator.token_file.read_text(), jwks)
    assert client.get(f"{base}/nowhere").status_code == 404
