"""Azure Container Registry's token service in process, without HTTP."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from entra_tokend.emulator._crypto import libtrust_key_id
from entra_tokend.emulator.registry import ACR_ISSUER, AcrError, RegistryTokenService
from entra_tokend.emulator.tenant import AccessTokenInvalid
from support.emulator import jwt_parts

TENANT = str(uuid.uuid4())


@pytest.fixture(name="acr")
def acr_fixture(tmp_path: Path) -> RegistryTokenService:
    # A stand-in for the tenant's check: the token text is the app id, "bad" is rejected.
    def verify(token: str) -> dict[str, Any]:
        if token == "bad":
            raise AccessTokenInvalid("signature does not verify with the tenant's keys")
        return {"tid": TENANT, "appid": token, "oid": f"oid-{token}"}

    service = RegistryTokenService(tmp_path / "acr", verify_entra=verify)
    service.add("a.example:5000")
    service.add("b.example:5000", actions=("pull",))
    return service


def _exchange(acr: RegistryTokenService, **form: str) -> dict[str, Any]:
    base = {
        "grant_type": "access_token",
        "service": "a.example:5000",
        "tenant": TENANT,
        "access_token": "app-1",
    }
    base.update(form)
    return acr.exchange(base)


def test_exchange_issues_a_refresh_token_for_the_registry(acr: RegistryTokenService) -> None:
    before = int(time.time())
    refresh = _exchange(acr)["refresh_token"]
    header, claims = jwt_parts(refresh)
    assert header["alg"] == "ES256"
    assert claims["aud"] == "a.example:5000"
    assert claims["iss"] == ACR_ISSUER
    assert claims["tenant"] == TENANT
    assert claims["grant_type"] == "refresh_token"
    assert claims["permissions"]["actions"] == ["pull", "push"]
    assert claims["exp"] - claims["iat"] == 10800
    assert before <= claims["iat"] <= int(time.time())
    assert acr.issued_refresh_tokens == [refresh]


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        ({"grant_type": "refresh_token"}, 400, "UNSUPPORTED"),
        ({"service": ""}, 400, "UNSUPPORTED"),
        ({"service": "elsewhere:1"}, 400, "UNSUPPORTED"),
        ({"access_token": ""}, 400, "UNSUPPORTED"),
        ({"access_token": "bad"}, 401, "UNAUTHORIZED"),
        ({"tenant": str(uuid.uuid4())}, 401, "UNAUTHORIZED"),
    ],
)
def test_exchange_errors(
    acr: RegistryTokenService, form: dict[str, str], status: int, code: str
) -> None:
    with pytest.raises(AcrError) as caught:
        _exchange(acr, **form)
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.body()["errors"][0]["code"] == code


def test_exchange_without_a_role_is_denied(acr: RegistryTokenService) -> None:
    acr.grant("a.example:5000", "*", None)
    acr.grant("a.example:5000", "app-2", ["pull"])
    with pytest.raises(AcrError) as caught:
        _exchange(acr)
    assert (caught.value.status, caught.value.code) == (403, "DENIED")
    assert jwt_parts(_exchange(acr, access_token="app-2")["refresh_token"])[1]["permissions"] == {
        "actions": ["pull"],
        "notActions": [],
    }


def test_token_grants_requested_actions_the_holder_has(acr: RegistryTokenService) -> None:
    refresh = _exchange(acr, service="b.example:5000")["refresh_token"]
    body = acr.token(
        "b.example:5000",
        ["repository:team/app:pull,push", "repository:other:pull", "nonsense"],
        refresh,
    )
    assert body["access_token"] == body["token"]
    header, claims = jwt_parts(body["token"])
    assert header["kid"] == acr.key.kid
    assert claims["aud"] == "b.example:5000"  # one string, never a list
    assert claims["iss"] == ACR_ISSUER
    assert claims["nbf"] <= time.time() < claims["exp"]
    assert claims["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]},
        {"type": "repository", "name": "other", "actions": ["pull"]},
    ]


def test_token_rejects_foreign_expired_and_revoked_refresh_tokens(
    acr: RegistryTokenService,
) -> None:
    refresh = _exchange(acr)["refresh_token"]
    for service, token in [("b.example:5000", refresh), ("a.example:5000", "x.y.z")]:
        with pytest.raises(AcrError) as caught:
            acr.token(service, [], token)
        assert caught.value.status == 401
    now = int(time.time())
    expired = acr.key.sign_jwt(
        {"aud": "a.example:5000", "grant_type": "refresh_token", "iat": now - 20, "exp": now - 10}
    )
    with pytest.raises(AcrError, match="expired"):
        acr.token("a.example:5000", [], expired)
    assert acr.token("a.example:5000", [], refresh)["access_token"]
    acr.revoke_refresh_tokens("a.example:5000")
    with pytest.raises(AcrError, match="revoked") as caught:
        acr.token("a.example:5000", [], refresh)
    assert "visit https://aka.ms/acr/authorization" in caught.value.message
    # Revocation covers the tokens issued so far, not the next one (even in the same second).
    fresh = _exchange(acr)["refresh_token"]
    assert acr.token("a.example:5000", [], fresh)["token"]


def test_token_variants_check_grant_type_and_basic_user(acr: RegistryTokenService) -> None:
    refresh = _exchange(acr)["refresh_token"]
    pairs = [
        ("grant_type", "refresh_token"),
        ("service", "a.example:5000"),
        ("scope", "repository:x:pull"),
        ("scope", "repository:y:push"),
        ("refresh_token", refresh),
    ]
    claims = jwt_parts(acr.token_from_form(pairs)["token"])[1]
    assert [a["name"] for a in claims["access"]] == ["x", "y"]
    with pytest.raises(AcrError, match="grant_type"):
        acr.token_from_form([("grant_type", "password"), *pairs[1:]])
    query = [("service", "a.example:5000"), ("scope", "repository:x:pull")]
    null_user = "00000000-0000-0000-0000-000000000000"
    assert acr.token_from_basic(query, (null_user, refresh))["token"]
    for creds in [None, ("admin", refresh)]:
        with pytest.raises(AcrError) as caught:
            acr.token_from_basic(query, creds)
        assert caught.value.status == 401


def test_challenge_names_the_registry_of_the_host(acr: RegistryTokenService) -> None:
    headers, body = acr.challenge("https://emu/oauth2/token", "b.example:5000")
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="https://emu/oauth2/token",service="b.example:5000"'
    )
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    assert 'service="a.example:5000"' in acr.challenge("r", "unknown")[0]["WWW-Authenticate"]


def test_rootcertbundle_holds_the_signing_key(acr: RegistryTokenService) -> None:
    cert = x509.load_pem_x509_certificate(acr.rootcertbundle.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert libtrust_key_id(public) == acr.key.kid
