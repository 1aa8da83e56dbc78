"""The emulator's roles in process, without HTTP: chunked bodies, faults, keys, the tenant."""

from __future__ import annotations

import base64
import hashlib
import io
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from entra_tokend.emulator import Fault
from entra_tokend.emulator._crypto import EcSigningKey, SigningKey, cached_key, libtrust_key_id
from entra_tokend.emulator.errors import EntraError
from entra_tokend.emulator.faults import FaultQueue, answer
from entra_tokend.emulator.http import read_chunked
from entra_tokend.emulator.issuer import (
    IDENTITY_BINDING_AUDIENCE,
    TOKEN_EXCHANGE_AUDIENCE,
    ClusterIssuer,
)
from entra_tokend.emulator.kubelet import ProjectedVolume
from entra_tokend.emulator.registry import ACR_RESOURCE
from entra_tokend.emulator.tenant import AccessTokenInvalid, Tenant, credential
from entra_tokend.emulator.wire import Request
from support.emulator import jwt_parts

# --------------------------------------------------------------------------- chunked bodies


def test_read_chunked_decodes_extensions_and_trailers_and_stops_at_the_end() -> None:
    raw = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: a\r\n\r\nNEXT REQUEST"
    stream = io.BytesIO(raw)
    assert read_chunked(stream) == b"hello world"
    assert stream.read() == b"NEXT REQUEST"  # nothing of the next request was consumed


@pytest.mark.parametrize(
    "raw",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"0x5\r\nhello\r\n0\r\n\r\n",  # int(..., 16) would accept it; the grammar does not
        b"5\r\nhel",  # truncated chunk
        b"5\r\nhelloXX0\r\n\r\n",  # missing CRLF after the data
        b"5",  # truncated size line
    ],
)
def test_read_chunked_rejects_malformed_bodies(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"chunk"):
        read_chunked(io.BytesIO(raw))


def test_read_chunked_enforces_the_size_limit() -> None:
    with pytest.raises(ValueError, match="larger than 8 bytes"):
        read_chunked(io.BytesIO(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"), limit=8)


def test_request_form_joins_repeated_fields_with_a_space() -> None:
    req = Request("POST", "/", "/", (), {}, b"scope=a&scope=b&x=1", ("127.0.0.1", 1))
    assert req.form() == {"scope": "a b", "x": "1"}
    assert req.form_pairs() == [("scope", "a"), ("scope", "b"), ("x", "1")]
    assert "scope=a" not in repr(req)


# --------------------------------------------------------------------------- faults


def test_fault_queue_is_fifo_per_target_and_counts_uses() -> None:
    q = FaultQueue()
    q.inject(
        Fault("status", count=2, status=503),
        Fault("reset", target="acr_exchange"),
        Fault("html", target="proxy"),
    )
    assert q.pending() == 4
    assert q.take(("acr_token",)) is None
    exchange = q.take(("acr_exchange",))
    assert exchange is not None
    assert exchange.kind == "reset"
    assert q.take(("acr_exchange",)) is None
    # The proxy listener draws its own faults first, then Entra's, in queue order.
    first = q.take(("proxy", "token"))
    assert first is not None
    assert first.kind == "status"
    assert q.pending() == 2
    q.clear()
    assert q.pending() == 0


def test_fault_targets_are_validated() -> None:
    with pytest.raises(ValueError, match="fault target"):
        Fault.from_dict({"kind": "status", "target": "nowhere"})
    with pytest.raises(ValueError, match="unknown fault target"):
        Fault("status", target="nowhere")  # type: ignore[arg-type]
    assert Fault.from_dict({"kind": "reset", "target": "acr_token"}).target == "acr_token"


def test_fault_answers_are_shaped_like_their_service() -> None:
    entra = answer(Fault("status", status=429, retry_after="3"), 3600)
    assert entra.headers["Retry-After"] == "3"
    assert b"AADSTS90055" in entra.body
    acr = answer(Fault("status", status=401, target="acr_exchange"), 3600)
    assert acr.status == 401
    assert b'"errors": [{"code": "UNAUTHORIZED"' in acr.body
    proxy = answer(Fault("status", status=502, target="proxy"), 3600)
    assert proxy.content_type.startswith("text/plain")
    assert b"identity-binding proxy" in proxy.body
    missing = answer(Fault("no_access_token", target="acr_token"), 3600)
    assert missing.status == 200
    assert b"token" not in missing.body.replace(b"token_type", b"")


# --------------------------------------------------------------------------- keys


def test_libtrust_key_id_follows_the_recipe() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    kid = libtrust_key_id(key.public_key())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    groups = kid.split(":")
    assert len(groups) == 12
    assert all(len(g) == 4 for g in groups)
    assert "".join(groups) == expected


def test_es256_tokens_have_a_raw_signature_and_verify() -> None:
    key = EcSigningKey(ec.generate_private_key(ec.SECP256R1()))
    token = key.sign_jwt({"aud": "r", "exp": 1})
    header, claims = jwt_parts(token)
    assert header == {"typ": "JWT", "alg": "ES256", "kid": key.kid}
    assert claims == {"aud": "r", "exp": 1}
    sig = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    assert len(sig) == 64  # r || s, not DER
    assert key.verify_jwt(token)
    head, _body, tail = token.split(".")
    other = base64.urlsafe_b64encode(b'{"aud":"x","exp":1}').rstrip(b"=").decode()
    assert not key.verify_jwt(f"{head}.{other}.{tail}")
    assert not EcSigningKey(ec.generate_private_key(ec.SECP256R1())).verify_jwt(token)


# --------------------------------------------------------------------------- tenant, no HTTP

CLUSTER = "https://cluster.example"
TENANT = str(uuid.uuid4())


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path: Path) -> ClusterIssuer:
    issuer = ClusterIssuer(
        tmp_path / "keys",
        ProjectedVolume(tmp_path / "sa"),
        lambda: CLUSTER,
        namespace="ns",
        service_account="sa",
        token_ttl=600,
    )
    issuer.load_keys()
    return issuer


@pytest.fixture(name="tenant")
def tenant_fixture(cluster: ClusterIssuer) -> Tenant:
    tenant = Tenant(
        TENANT,
        authority_host=lambda: "https://login.example",
        cluster_issuer=lambda: CLUSTER,
        assertion_key=lambda: cluster.key,
    )
    tenant.load_keys(SigningKey(cached_key("entra")))
    sub = cluster.subject
    tenant.add_app(
        "both",
        [
            credential(issuer=None, subject=sub, audience=None),
            credential(issuer=None, subject=sub, audience=None, identity_binding=True),
        ],
    )
    tenant.add_app(
        "binding-only", [credential(issuer=None, subject=sub, audience=None, identity_binding=True)]
    )
    return tenant


def _form(
    client_id: str, assertion: str, scope: str = "https://vault.azure.net/.default"
) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def _code(tenant: Tenant, form: dict[str, str], via: bool) -> int:
    try:
        tenant.handle_token_request(TENANT, form, via_identity_binding=via)
    except EntraError as err:
        return err.code
    return 0


def test_binding_credentials_match_only_through_the_proxy(
    tenant: Tenant, cluster: ClusterIssuer
) -> None:
    binding = cluster.issue(audience=[IDENTITY_BINDING_AUDIENCE])
    regular = cluster.issue(audience=[TOKEN_EXCHANGE_AUDIENCE])
    assert _code(tenant, _form("both", binding), via=True) == 0
    assert _code(tenant, _form("both", binding), via=False) == 700212
    assert _code(tenant, _form("both", regular), via=False) == 0
    assert _code(tenant, _form("both", regular), via=True) == 700212
    # An identity that has only the binding's credential has none for direct requests.
    assert _code(tenant, _form("binding-only", binding), via=False) == 70021


def test_verify_access_token_checks_signature_audience_and_expiry(
    tenant: Tenant, cluster: ClusterIssuer
) -> None:
    form = _form("both", cluster.issue(), scope=f"{ACR_RESOURCE}/.default")
    token = tenant.handle_token_request(TENANT, form)["access_token"]
    assert tenant.verify_access_token(token, audience=ACR_RESOURCE)["tid"] == TENANT
    with pytest.raises(AccessTokenInvalid, match="audience"):
        tenant.verify_access_token(token, audience="https://vault.azure.net")
    now = int(time.time())
    stale = tenant.key.sign_jwt(
        {"aud": ACR_RESOURCE, "iss": tenant.sts_issuer, "tid": TENANT, "exp": now - 1}
    )
    with pytest.raises(AccessTokenInvalid, match="expired"):
        tenant.verify_access_token(stale, audience=ACR_RESOURCE)
    forged = cluster.key.sign_jwt(jwt_parts(token)[1])
    with pytest.raises(AccessTokenInvalid, match="signature") as caught:
        tenant.verify_access_token(forged, audience=ACR_RESOURCE)
    assert forged not in str(caught.value)
