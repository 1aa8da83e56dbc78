"""The identity-binding proxy: TLS with its own CA and SNI name, forwarding to Entra, RBAC,
CA rotation, and azure-identity's ``WorkloadIdentityCredential(enable_azure_proxy=True)``."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from entra_tokend.emulator import Emulator, Fault
from entra_tokend.emulator.kubelet import DATA_DIR
from entra_tokend.emulator.proxy import IdentityBindingProxy
from support.emulator import (
    JWT_BEARER,
    SCOPE,
    assert_entra_error,
    ca_context,
    clean_env,
    jwt_parts,
    post_token,
    token_form,
)

SNI = "ib.aks.local"


@pytest.fixture(name="ib_emulator")
def ib_emulator_fixture(tmp_path: Path) -> Iterator[Emulator]:
    """An emulator over TLS in identity-binding mode."""
    with Emulator(tmp_path / "ib", tls=True, identity_binding=True) as emu:
        yield emu


def _proxy(emu: Emulator) -> IdentityBindingProxy:
    assert emu.proxy is not None
    return emu.proxy


def _trust(emu: Emulator) -> ssl.SSLContext:
    """Trust exactly the proxy CA bundle as it is on disk now."""
    return ssl.create_default_context(cadata=_proxy(emu).ca_file.read_text())


def _post_proxy(
    emu: Emulator,
    form: dict[str, str],
    *,
    sni: str | None = SNI,
    verify: ssl.SSLContext | None = None,
    tenant: str | None = None,
) -> httpx.Response:
    """POST ``form`` to the proxy's token path on a new connection, with ``sni`` as TLS
    server name and certificate name."""
    url = f"{emu.token_proxy_url}/{tenant or emu.tenant_id}/oauth2/v2.0/token"
    extensions = {"sni_hostname": sni} if sni is not None else {}
    with httpx.Client(verify=verify or _trust(emu), trust_env=False, timeout=10) as c:
        return c.post(url, data=form, extensions=extensions)


def test_env_carries_the_three_proxy_variables(ib_emulator: Emulator) -> None:
    env = ib_emulator.env()
    proxy = _proxy(ib_emulator)
    assert env["AZURE_KUBERNETES_TOKEN_PROXY"] == proxy.url
    assert proxy.url.startswith("https://127.0.0.1:")
    assert proxy.url.endswith("/identitybinding")
    assert env["AZURE_KUBERNETES_SNI_NAME"] == SNI
    ca_file = Path(env["AZURE_KUBERNETES_CA_FILE"])
    assert ca_file.is_symlink()
    assert os.readlink(ca_file) == f"{DATA_DIR}/ca.crt"
    assert ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    # The projected token carries the identity-binding audience.
    assert jwt_parts(ib_emulator.token_file.read_text())[1]["aud"] == ["api://AKSIdentityBinding"]


def test_token_through_the_proxy_and_the_same_assertion_direct(ib_emulator: Emulator) -> None:
    form = token_form(ib_emulator)
    through = _post_proxy(ib_emulator, form)
    assert through.status_code == 200, through.text
    assert through.json()["access_token"] in ib_emulator.issued_tokens
    with httpx.Client(verify=ca_context(ib_emulator), trust_env=False) as c:
        direct = post_token(c, ib_emulator, form)
    assert_entra_error(direct, 401, "invalid_client", 700212)
    via, straight = ib_emulator.token_requests()
    assert via.via_proxy
    assert via.server_name == SNI
    assert via.path == f"/identitybinding/{ib_emulator.tenant_id}/oauth2/v2.0/token"
    assert (via.status, straight.status) == (200, 401)
    assert not straight.via_proxy
    assert ib_emulator.proxy_requests() == [via]


def test_an_ordinary_assertion_through_the_proxy_gets_entras_error(
    ib_emulator: Emulator,
) -> None:
    regular = ib_emulator.issue_assertion(audience=["api://AzureADTokenExchange"])
    resp = _post_proxy(ib_emulator, token_form(ib_emulator, regular))
    assert_entra_error(resp, 401, "invalid_client", 700212)
    # Entra's own validation errors pass through the proxy unchanged.
    resp = _post_proxy(ib_emulator, token_form(ib_emulator, scope="https://x/read"))
    assert_entra_error(resp, 400, "invalid_scope", 1002012)


def test_tls_names_only_the_sni_and_trusts_only_the_proxy_ca(ib_emulator: Emulator) -> None:
    form = token_form(ib_emulator)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _post_proxy(ib_emulator, form, sni=None)  # checked against 127.0.0.1: not named
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _post_proxy(ib_emulator, form, sni="other.aks.local")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _post_proxy(ib_emulator, form, verify=ca_context(ib_emulator))  # the emulator's CA
    assert ib_emulator.token_requests() == []
    assert _post_proxy(ib_emulator, form).status_code == 200


def test_plain_http_to_the_proxy_fails(ib_emulator: Emulator) -> None:
    url = _proxy(ib_emulator).url.replace("https://", "http://")
    with httpx.Client(trust_env=False, timeout=5) as c, pytest.raises(httpx.TransportError):
        c.post(f"{url}/{ib_emulator.tenant_id}/oauth2/v2.0/token", data={"a": "b"})


def test_proxy_answers_its_own_failures_in_plain_text(ib_emulator: Emulator) -> None:
    _proxy(ib_emulator).deny(client_id=ib_emulator.client_id)
    denied = _post_proxy(ib_emulator, token_form(ib_emulator))
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("text/plain")
    assert "use-managed-identity" in denied.text
    assert ib_emulator.subject in denied.text
    with pytest.raises(json.JSONDecodeError):
        denied.json()
    _proxy(ib_emulator).allow_all()
    assert _post_proxy(ib_emulator, token_form(ib_emulator)).status_code == 200
    missing = _post_proxy(ib_emulator, token_form(ib_emulator, client_assertion=None))
    assert missing.status_code == 400
    garbage = _post_proxy(ib_emulator, token_form(ib_emulator, "not-a-jwt"))
    assert (garbage.status_code, garbage.headers["content-type"][:10]) == (401, "text/plain")
    with httpx.Client(verify=_trust(ib_emulator), trust_env=False) as c:
        other = c.get(f"{_proxy(ib_emulator).url}/anything", extensions={"sni_hostname": SNI})
    assert other.status_code == 404
    last = ib_emulator.proxy_requests()[-1]
    assert (last.endpoint, last.status, last.server_name) == ("proxy_other", 404, SNI)
    assert len(ib_emulator.issued_tokens) == 1  # only the request RBAC allowed got a token


def test_faults_at_the_proxy(ib_emulator: Emulator) -> None:
    ib_emulator.inject(
        Fault("status", status=502, target="proxy"),
        Fault("status", status=429, retry_after="2"),
    )
    own = _post_proxy(ib_emulator, token_form(ib_emulator))
    assert own.status_code == 502
    assert own.headers["content-type"].startswith("text/plain")
    entra = _post_proxy(ib_emulator, token_form(ib_emulator))
    assert_entra_error(entra, 429, "temporarily_unavailable", 90055)
    assert entra.headers["retry-after"] == "2"
    ib_emulator.inject(Fault("reset", target="proxy"))
    with pytest.raises(httpx.TransportError):
        _post_proxy(ib_emulator, token_form(ib_emulator))
    assert [r.status for r in ib_emulator.proxy_requests()] == [502, 429, 0]


def test_ca_rotation_takes_effect_at_once_and_republishes_the_bundle(
    ib_emulator: Emulator,
) -> None:
    proxy = _proxy(ib_emulator)
    old_trust = _trust(ib_emulator)
    old_bundle = proxy.ca_file.read_text()
    form = token_form(ib_emulator)
    assert _post_proxy(ib_emulator, form, verify=old_trust).status_code == 200
    ib_emulator.rotate_proxy_ca()
    assert proxy.ca_file.read_text() != old_bundle
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _post_proxy(ib_emulator, form, verify=old_trust)
    assert _post_proxy(ib_emulator, form).status_code == 200
    # An overlapping rotation publishes both CAs, newest first.
    ib_emulator.rotate_proxy_ca(keep_previous=True)
    assert proxy.ca_file.read_text().count("BEGIN CERTIFICATE") == 2
    # The empty-file moment a reader must survive, written as kubelet writes.
    proxy.publish_ca_bundle(b"")
    assert proxy.ca_file.read_text() == ""
    assert os.readlink(proxy.ca_file) == f"{DATA_DIR}/ca.crt"


def test_ca_rotation_through_the_admin_endpoint(ib_emulator: Emulator, tmp_path: Path) -> None:
    admin = f"{ib_emulator.authority_host}/_admin"
    before = _proxy(ib_emulator).ca_file.read_text()
    with httpx.Client(verify=ca_context(ib_emulator), trust_env=False) as c:
        resp = c.post(f"{admin}/rotate-proxy-ca", json={})
        assert resp.json() == {"rotated": True}
        assert c.get(f"{admin}/status").json()["identity_binding"] is True
    assert _proxy(ib_emulator).ca_file.read_text() != before
    with Emulator(tmp_path / "plain") as plain, httpx.Client(trust_env=False) as c:
        refused = c.post(f"{plain.authority_host}/_admin/rotate-proxy-ca", json={})
        assert refused.status_code == 400
        assert "identity-binding" in refused.json()["detail"]


AZURE_IDENTITY_APP = """
import hashlib, json
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import WorkloadIdentityCredential
scope = "https://vault.azure.net/.default"
token = WorkloadIdentityCredential(enable_azure_proxy=True).get_token(scope).token
try:
    WorkloadIdentityCredential().get_token(scope)
    direct = "accepted"
except ClientAuthenticationError as exc:
    direct = "AADSTS700212" if "AADSTS700212" in str(exc) else "other error"
print(json.dumps({"sha256": hashlib.sha256(token.encode()).hexdigest(), "direct": direct}))
"""


def test_azure_identity_gets_a_token_through_the_proxy(ib_emulator: Emulator) -> None:
    env_file = ib_emulator.write_env_file(ib_emulator.state_dir / "env")
    # An unmodified app given only the env file: through the proxy it gets a token; the same
    # credential without the proxy option goes straight to Entra and is refused.
    proc = subprocess.run(
        [
            "bash",
            "-c",
            'set -a; . "$1"; set +a; exec "$2" -c "$3"',
            "bash",
            str(env_file),
            sys.executable,
            AZURE_IDENTITY_APP,
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["direct"] == "AADSTS700212"
    (issued,) = ib_emulator.issued_tokens
    assert out["sha256"] == hashlib.sha256(issued.encode()).hexdigest()
    via, direct = ib_emulator.token_requests()
    assert via.via_proxy
    assert via.server_name == SNI
    assert via.path == f"/identitybinding/{ib_emulator.tenant_id}/oauth2/v2.0/token"
    assert set(via.form) == {
        "client_assertion",
        "client_assertion_type",
        "client_id",
        "grant_type",
        "scope",
    }
    assert via.form["client_assertion_type"] == JWT_BEARER
    assert via.form["scope"] == SCOPE
    assert via.form["client_assertion"] == ib_emulator.token_file.read_text()
    assert direct.path == f"/{ib_emulator.tenant_id}/oauth2/v2.0/token"
    assert direct.status == 401
