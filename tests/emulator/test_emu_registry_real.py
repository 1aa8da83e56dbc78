"""Real skopeo and two real CNCF distribution registries against the emulator's ACR service.

Skipped (with the reason) only when ``docker-registry`` or ``skopeo`` is not installed;
``tests/emulator/registry_tools.sh`` installs both.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from entra_tokend.emulator import Emulator
from support.emulator import ca_context, tls_emulator_fixture  # noqa: F401 - fixture
from support.registry import (
    ACR_NULL_USER,
    RegistryFactory,
    SkopeoFactory,
    acr_refresh_token,
    make_oci_layout,
    registry_factory_fixture,  # noqa: F401 - fixture
    registry_tools_fixture,  # noqa: F401 - fixture
    skopeo_fixture,  # noqa: F401 - fixture
    write_docker_config,
)


def test_skopeo_pushes_copies_and_inspects_with_acr_refresh_tokens(
    tls_emulator: Emulator,
    registry_factory: RegistryFactory,
    skopeo: SkopeoFactory,
    tmp_path: Path,
) -> None:
    emu = tls_emulator
    a, b = registry_factory.start(emu), registry_factory.start(emu)
    with httpx.Client(verify=ca_context(emu), trust_env=False, timeout=10) as c:
        # As `az acr login` does: the registry's challenge names the token service (realm).
        challenge = c.get(f"https://{a.host}/v2/").headers["www-authenticate"]
        assert challenge == f'Bearer realm="{emu.registry_realm}",service="{a.host}"'
        refresh = {reg.host: acr_refresh_token(c, emu, reg.host) for reg in (a, b)}
    # One docker config for both registries, the way a pod's DOCKER_CONFIG holds them.
    authfile = write_docker_config(tmp_path / "auth.json", refresh)
    image = make_oci_layout(tmp_path / "image")
    manifest_digest = json.loads((tmp_path / "image" / "index.json").read_text())["manifests"][0][
        "digest"
    ]
    tool = skopeo(emu)

    pushed = tool.copy(image, f"docker://{a.host}/team/hello:v1", authfile)
    assert pushed.returncode == 0, pushed.stderr
    mirrored = tool.copy(
        f"docker://{a.host}/team/hello:v1", f"docker://{b.host}/mirror/hello:v1", authfile
    )
    assert mirrored.returncode == 0, mirrored.stderr
    inspected = tool.inspect(f"docker://{b.host}/mirror/hello:v1", authfile)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == manifest_digest

    # skopeo asked the realm with Basic auth (null user, refresh token) for both services.
    token_gets = [r for r in emu.acr_requests() if r.endpoint == "acr_token"]
    assert {r.query["service"] for r in token_gets} == {a.host, b.host}
    assert all(r.method == "GET" and r.query["account"] == ACR_NULL_USER for r in token_gets)

    # The real registry checks the token: one made for the other registry is refused.
    with httpx.Client(verify=ca_context(emu), trust_env=False, timeout=10) as c:
        for_b = c.get(
            emu.registry_realm,
            params={"service": b.host, "scope": "repository:team/hello:pull"},
            auth=(ACR_NULL_USER, refresh[b.host]),
        ).json()["token"]
        for_a = c.get(
            emu.registry_realm,
            params={"service": a.host, "scope": "repository:team/hello:pull"},
            auth=(ACR_NULL_USER, refresh[a.host]),
        ).json()["token"]
        url = f"https://{a.host}/v2/team/hello/manifests/v1"
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        assert c.get(url, headers={**accept, "Authorization": f"Bearer {for_b}"}).status_code == 401
        assert c.get(url, headers={**accept, "Authorization": f"Bearer {for_a}"}).status_code == 200

    # A revoked refresh token no longer gets skopeo in.
    emu.revoke_acr_refresh_tokens(b.host)
    refused = tool.inspect(f"docker://{b.host}/mirror/hello:v1", authfile)
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower()
    assert refresh[b.host] not in refused.stderr
