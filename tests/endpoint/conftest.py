"""A real daemon with the managed-identity endpoint, against the emulator (module-scoped: the
SDK tests share one daemon, each asks for what it needs)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.ep_helpers import EndpointDaemon
from testlib import DaemonProcess


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointDaemon]:
    from entra_tokend.emulator import Emulator

    root = tmp_path_factory.mktemp("endpoint")
    emu: Any = Emulator(root / "emulator")
    emu.start()
    other_id = str(uuid.uuid4())
    emu.add_app(other_id)
    other_object_id = str(uuid.uuid4())
    other_resource_id = (
        f"/subscriptions/{uuid.uuid4()}/resourceGroups/rg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/other"
    )
    ghost_id = str(uuid.uuid4())  # never registered: Entra answers AADSTS700016
    secret = secrets.token_urlsafe(32)
    config = root / "entra-tokend.toml"
    config.write_text(
        f"""
output_dir = "{root / "out"}"
listen = "127.0.0.1:0"

[identity.other]
tenant_id = "{emu.tenant_id}"
client_id = "{other_id}"
token_file = "{emu.token_file}"
authority_host = "{emu.authority_host}"
object_id = "{other_object_id}"
resource_id = "{other_resource_id}"

[identity.ghost]
tenant_id = "{emu.tenant_id}"
client_id = "{ghost_id}"
token_file = "{emu.token_file}"
authority_host = "{emu.authority_host}"

[token.graph]
scope = "https://graph.microsoft.com/.default"

[endpoint]
listen = "127.0.0.1:0"
secret_env = "EP_SECRET"
imds = true
allow = [
  "https://storage.azure.com",
  "https://graph.microsoft.com",
  "https://management.azure.com",
  "https://database.windows.net",
  "https://management.core.windows.net/",
  "https://eventhubs.azure.net",
  {{resource = "https://vault.azure.net", identity = "other"}},
  {{resource = "api://ghost", identity = "ghost"}},
]
"""
    )
    env = {**emu.env(), "ENTRA_TOKEND_CONFIG": str(config), "EP_SECRET": secret}
    daemon = DaemonProcess(["run"], env, root / "daemon.log")
    try:
        started = daemon.wait_event("managed-identity endpoint listening", timeout=30)
        metrics = daemon.wait_event("listening", timeout=30)
        daemon.wait_event("token written", timeout=30, token="graph")
        yield EndpointDaemon(
            daemon=daemon,
            emulator=emu,
            secret=secret,
            port=int(started["listen"].rsplit(":", 1)[1]),
            metrics_port=int(metrics["listen"].rsplit(":", 1)[1]),
            out=Path(root / "out"),
            other_client_id=other_id,
            other_object_id=other_object_id,
            other_resource_id=other_resource_id,
            ghost_client_id=ghost_id,
        )
    finally:
        daemon.stop()
        emu.stop()
