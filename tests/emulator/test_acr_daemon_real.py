"""The daemon's docker config used by REAL skopeo against two REAL CNCF distribution registries
whose token realm is the emulator's ACR token service — before and after a refresh.

Skipped (with the reason) only when ``docker-registry`` or ``skopeo`` is not installed;
``tests/emulator/registry_tools.sh`` installs both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from entra_tokend.emulator import Emulator
from support import DaemonProcess, emulator_env, wait_until
from support.registry import (
    RegistryFactory,
    SkopeoFactory,
    make_oci_layout,
    refresh_tokens,
    registry_factory_fixture,  # noqa: F401 - fixture
    registry_tools_fixture,  # noqa: F401 - fixture
    skopeo_fixture,  # noqa: F401 - fixture
)


def test_skopeo_uses_the_daemons_docker_config_for_two_registries_across_a_refresh(
    registry_factory: RegistryFactory,
    skopeo: SkopeoFactory,
    daemon_factory: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    with Emulator(tmp_path / "emu", tls=True) as emu:
        a, b = registry_factory.start(emu), registry_factory.start(emu)
        out = tmp_path / "out"
        config = tmp_path / "c.toml"
        config.write_text(
            "min_refresh_interval = 0\n"
            f'[token.acr]\nformat = "docker-config"\nregistry = ["{a.host}", "{b.host}"]\n'
            'path = "docker/config.json"\nfile_mode = "0600"\n'
        )
        # Short Entra tokens: the docker config is refreshed on the shortest-lived credential.
        emu.access_token_lifetime = 6
        d = daemon_factory("run", "--config", str(config), env=emulator_env(emu, out))
        authfile = out / "docker" / "config.json"
        first = wait_until(lambda: refresh_tokens(authfile), timeout=30)
        assert set(first) == {a.host, b.host}

        tool = skopeo(emu)
        image = make_oci_layout(tmp_path / "image")
        pushed = tool.copy(image, f"docker://{a.host}/team/hello:v1", authfile)
        assert pushed.returncode == 0, pushed.stderr
        mirrored = tool.copy(
            f"docker://{a.host}/team/hello:v1", f"docker://{b.host}/mirror/hello:v1", authfile
        )
        assert mirrored.returncode == 0, mirrored.stderr

        # After a refresh: new refresh tokens for both registries, and skopeo still works.
        second = wait_until(
            lambda: (t := refresh_tokens(authfile)) and t[a.host] != first[a.host] and t,
            timeout=60,
        )
        assert second[b.host] != first[b.host]
        for host, repo in ((a.host, "team/hello"), (b.host, "mirror/hello")):
            inspected = tool.inspect(f"docker://{host}/{repo}:v1", authfile)
            assert inspected.returncode == 0, inspected.stderr
            assert json.loads(inspected.stdout)["Name"] == f"{host}/{repo}"

        # skopeo asked the realm with the daemon's refresh tokens (Basic auth, null user).
        gets = [r for r in emu.acr_requests() if r.endpoint == "acr_token"]
        assert {r.query["service"] for r in gets} == {a.host, b.host}
        assert d.stop() == 0
        text = d.log_text()
        for secret in [*first.values(), *second.values(), *emu.issued_tokens]:
            assert secret not in text
            assert secret.rsplit(".", 1)[-1] not in text
