"""The emulated cluster: projected-token claims, kubelet's layout across rotations, TLS."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import httpx
import pytest

from entra_tokend.emulator import Emulator
from entra_tokend.emulator.kubelet import DATA_DIR, DATA_TMP
from support.emulator import (
    ca_context,
    client_fixture,  # noqa: F401 - pytest fixture
    jwt_parts,
    post_token,
    tls_emulator_fixture,  # noqa: F401 - pytest fixture
    token_form,
    verify_with_jwks,
)


def _timestamped_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("..2"))


def _assert_kubelet_layout(emu: Emulator, expected: str) -> None:
    d = emu.volume.directory
    link = emu.token_file
    assert link.is_symlink()
    assert os.readlink(link) == f"{DATA_DIR}/{link.name}"
    data_target = os.readlink(d / DATA_DIR)
    assert _timestamped_dirs(d) == [data_target]
    assert not (d / DATA_TMP).exists()
    assert link.read_text() == expected


def test_projected_token_claims(tmp_path: Path) -> None:
    with Emulator(tmp_path, token_ttl=600, namespace="apps", service_account="api") as emu:
        header, claims = jwt_parts(emu.token_file.read_text())
        assert header["alg"] == "RS256"
        assert claims["iss"] == emu.issuer
        assert claims["sub"] == "system:serviceaccount:apps:api"
        assert claims["aud"] == ["api://AzureADTokenExchange"]
        assert claims["exp"] - claims["iat"] == 600
        assert claims["nbf"] == claims["iat"]
        assert claims["kubernetes.io"]["namespace"] == "apps"
        assert claims["kubernetes.io"]["serviceaccount"]["name"] == "api"
        expired = jwt_parts(emu.issue_assertion(expired=True))[1]
        assert expired["exp"] < time.time()


def test_layout_after_start_and_rotations(emulator: Emulator, client: httpx.Client) -> None:
    first = emulator.token_file.read_text()
    _assert_kubelet_layout(emulator, first)
    seen = {first}
    for _ in range(3):
        new = emulator.rotate()
        assert new not in seen
        seen.add(new)
        _assert_kubelet_layout(emulator, new)
        assert post_token(client, emulator, token_form(emulator)).status_code == 200
    assert oct(emulator.token_file.stat().st_mode & 0o777) == oct(0o644)


def test_rotate_with_custom_ttl_and_expired(emulator: Emulator, client: httpx.Client) -> None:
    _, claims = jwt_parts(emulator.rotate(ttl=120))
    assert claims["exp"] - claims["iat"] == 120
    emulator.rotate(expired=True)
    resp = post_token(client, emulator, token_form(emulator))
    assert resp.json()["error_codes"] == [700024]


def test_background_rotation(tmp_path: Path) -> None:
    with Emulator(tmp_path, rotate_every=0.05) as emu:
        first = emu.token_file.read_text()
        deadline = time.monotonic() + 10
        while emu.token_file.read_text() == first:
            assert time.monotonic() < deadline, "no rotation within 10 s"
            time.sleep(0.01)
    # Checked once the rotator has stopped: mid-rotation, two timestamped directories exist
    # for a moment by design (kubelet's steps 1-6), which is not what this test is about.
    _assert_kubelet_layout(emu, emu.token_file.read_text())


def test_keys_and_ids_survive_a_restart_in_the_same_state_dir(tmp_path: Path) -> None:
    with Emulator(tmp_path, tls=True) as emu:
        jwks = httpx.get(
            f"{emu.authority_host}/openid/v1/jwks", verify=ca_context(emu), trust_env=False
        ).json()
        assert emu.ca_file is not None
        ca = emu.ca_file.read_bytes()
    with Emulator(tmp_path, tls=True) as again:
        assert again.ca_file is not None
        assert again.ca_file.read_bytes() == ca
        assert verify_with_jwks(again.token_file.read_text(), jwks)


def test_tls_with_the_generated_ca(tls_emulator: Emulator) -> None:
    emu = tls_emulator
    assert emu.authority_host.startswith("https://127.0.0.1:")
    assert emu.ca_file is not None
    with httpx.Client(verify=ca_context(emu), trust_env=False) as c:
        assert post_token(c, emu, token_form(emu)).status_code == 200
        # The certificate also names localhost.
        doc = c.get(f"https://localhost:{emu.port}/.well-known/openid-configuration")
        assert doc.status_code == 200
    ctx = ssl.create_default_context()  # system trust store only: must refuse our CA
    with httpx.Client(verify=ctx, trust_env=False) as untrusting, pytest.raises(httpx.ConnectError):
        untrusting.get(f"{emu.authority_host}/openid/v1/jwks")
    # A failed handshake does not disturb the server.
    with httpx.Client(verify=ca_context(emu), trust_env=False) as c:
        assert post_token(c, emu, token_form(emu)).status_code == 200


def test_plain_http_client_against_tls_server_fails_cleanly(tls_emulator: Emulator) -> None:
    url = tls_emulator.authority_host.replace("https://", "http://")
    with httpx.Client(trust_env=False, timeout=5) as c, pytest.raises(httpx.TransportError):
        c.get(f"{url}/openid/v1/jwks")
