"""SIGHUP reloads the endpoint's allow list, ``imds`` and the identities' selectors (issue 23
§6); the listen address stays until a restart.

The endpoint reads its configuration per request from the provider's lookup, which a reload
replaces whole (with the running listener's address kept).
"""

from __future__ import annotations

import secrets
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.ep_helpers import EndpointDaemon
from testlib import DaemonProcess

VAULT = "https://vault.azure.net"


def _config(emu: Any, root: Path, *, object_id: str, allow: str, imds: bool) -> str:
    return f"""
output_dir = "{root / "out"}"
listen = "127.0.0.1:0"

[identity.default]
object_id = "{object_id}"

[endpoint]
listen = "127.0.0.1:0"
secret_env = "EP_SECRET"
imds = {"true" if imds else "false"}
allow = [{allow}]
"""


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[EndpointDaemon, Path, Any]]:
    from entra_tokend.emulator import Emulator

    emu: Any = Emulator(tmp_path / "emulator")
    emu.start()
    secret = secrets.token_urlsafe(32)
    config = tmp_path / "entra-tokend.toml"
    config.write_text(
        _config(
            emu,
            tmp_path,
            object_id=str(uuid.uuid4()),
            allow='"https://storage.azure.com"',
            imds=False,
        )
    )
    env = {**emu.env(), "ENTRA_TOKEND_CONFIG": str(config), "EP_SECRET": secret}
    daemon = DaemonProcess(["run"], env, tmp_path / "daemon.log")
    try:
        started = daemon.wait_event("managed-identity endpoint listening", timeout=30)
        metrics = daemon.wait_event("listening", timeout=30)
        yield (
            EndpointDaemon(
                daemon=daemon,
                emulator=emu,
                secret=secret,
                port=int(started["listen"].rsplit(":", 1)[1]),
                metrics_port=int(metrics["listen"].rsplit(":", 1)[1]),
                out=tmp_path / "out",
                other_client_id="",
            ),
            config,
            emu,
        )
    finally:
        daemon.stop()
        emu.stop()


def test_sighup_reloads_allow_imds_and_selectors(
    reloadable: tuple[EndpointDaemon, Path, Any], tmp_path: Path
) -> None:
    ep, config, emu = reloadable
    assert ep.get(VAULT)[0] == 403
    new_object_id = str(uuid.uuid4())
    assert ep.get(VAULT, object_id=new_object_id)[0] == 400
    config.write_text(
        _config(
            emu,
            tmp_path,
            object_id=new_object_id,
            allow=f'"https://storage.azure.com", "{VAULT}"',
            imds=True,
        )
    )
    ep.daemon.signal(signal.SIGHUP)
    ep.daemon.wait_event("configuration reloaded", timeout=30)
    assert ep.get(VAULT)[0] == 200
    assert ep.get(VAULT, object_id=new_object_id)[0] == 200
    assert ep.imds(f"api-version=2018-02-01&resource={VAULT}")[0] == 200
