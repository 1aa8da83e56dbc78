"""``docker-credential-entra-tokend`` with the REAL docker CLI and skopeo: a user-owned config
that names the helper in ``credHelpers`` for the daemon's registry and keeps its own ``auths``
entry for a second registry — both work, before and after the daemon refreshes its file.

Skipped (with the reason) when ``docker-registry``, ``skopeo`` or the ``docker`` CLI is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from registry_helpers import (
    RegistryFactory,
    SkopeoFactory,
    acr_refresh_token,
    docker_config,
    make_oci_layout,
    registry_factory_fixture,  # noqa: F401 - fixture
    registry_tools_fixture,  # noqa: F401 - fixture
    skopeo_fixture,  # noqa: F401 - fixture
)
from test_acr_daemon_real import refresh_tokens

from entra_tokend.emulator import Emulator
from testlib import DaemonProcess, emulator_env, wait_until

DAEMON_SRC = Path(__file__).resolve().parents[2] / "daemon"


def helper_bin(directory: Path) -> Path:
    """A directory holding ``docker-credential-entra-tokend`` that runs this checkout's
    helper (what the console script of an installed wheel does)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "docker-credential-entra-tokend"
    script.write_text(
        f"#!/bin/sh\nPYTHONPATH={DAEMON_SRC} exec {sys.executable} -m entra_tokend.credhelper"
        ' "$@"\n'
    )
    script.chmod(0o755)
    return directory


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_docker_cli_and_skopeo_use_the_helper_and_keep_the_users_other_registry(
    registry_factory: RegistryFactory,
    skopeo: SkopeoFactory,
    daemon_factory: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed")
    with Emulator(tmp_path / "emu", tls=True) as emu:
        acr, other = registry_factory.start(emu), registry_factory.start(emu)
        out = tmp_path / "out"
        config = tmp_path / "c.toml"
        config.write_text(
            "min_refresh_interval = 0\n"
            f'[token.acr]\nformat = "docker-config"\nregistry = ["{acr.host}"]\n'
            'path = "docker/config.json"\n'
        )
        emu.access_token_lifetime = 6  # a refresh within the test
        d = daemon_factory("run", "--config", str(config), env=emulator_env(emu, out))
        daemon_file = out / "docker" / "config.json"
        first = wait_until(lambda: refresh_tokens(daemon_file), timeout=30)

        # The user's own config: the helper for the daemon's registry, a static entry (as
        # `docker login` writes it) for the other one.
        assert emu.ca_file is not None
        with httpx.Client(verify=str(emu.ca_file), trust_env=False) as client:
            other_secret = acr_refresh_token(client, emu, other.host)
        user_dir = tmp_path / "user-docker"
        user_dir.mkdir()
        user_config = docker_config({other.host: other_secret})
        user_config["credHelpers"] = {acr.host: "entra-tokend"}
        (user_dir / "config.json").write_text(json.dumps(user_config))
        before = (user_dir / "config.json").read_bytes()

        tool = skopeo(emu)
        env = {
            **tool.env(),
            "PATH": f"{helper_bin(tmp_path / 'bin')}:{os.environ.get('PATH', '')}",
            "ENTRA_TOKEND_DOCKER_CONFIG": str(daemon_file),
            "DOCKER_CONFIG": str(user_dir),
            "SSL_CERT_FILE": str(emu.ca_file),
        }
        image = make_oci_layout(tmp_path / "image")
        authfile = user_dir / "config.json"
        certs = str(tool.cert_dir)

        for host in (acr.host, other.host):
            pushed = _run(env, "skopeo",
                "copy", "--dest-cert-dir", certs, "--dest-authfile", str(authfile),
                image, f"docker://{host}/team/hello:v1",
            )  # fmt: skip
            assert pushed.returncode == 0, pushed.stderr
        # After the daemon's next refresh, the same user config still serves both registries.
        wait_until(lambda: (t := refresh_tokens(daemon_file)) and t != first and t, timeout=60)
        for host in (acr.host, other.host):
            inspected = _run(env, "docker", "manifest", "inspect", f"{host}/team/hello:v1")
            assert inspected.returncode == 0, inspected.stderr + inspected.stdout
            assert json.loads(inspected.stdout)["schemaVersion"] == 2
            checked = _run(env, "skopeo",
                "inspect", "--cert-dir", certs, "--authfile", str(authfile),
                f"docker://{host}/team/hello:v1",
            )  # fmt: skip
            assert checked.returncode == 0, checked.stderr
        assert authfile.read_bytes() == before  # the daemon never touched the user's file
        # The daemon's registry was reached with the daemon's (refreshed) credential.
        services = {r.query["service"] for r in emu.acr_requests() if r.endpoint == "acr_token"}
        assert services == {acr.host, other.host}
        assert d.stop() == 0
