"""The Azure CLI (``az``, pip ``azure-cli`` in a venv of its own) through the daemon's endpoint:
the README's recipes ``az login --identity`` and ``az account get-access-token``.

``az login --identity`` lists the identity's subscriptions at Azure Resource Manager after it
gets its token, so the test serves a small ARM of its own over TLS on loopback (a cloud
registered with ``az cloud register`` points there; azure-core sends bearer tokens over HTTPS
only). That fake ARM accepts a request only when its bearer token is an emulator token whose
``aud`` is the classic ARM audience *with* its slash (``https://management.core.windows.net/``),
the audience az asks for.

``az`` is found at ``$ENTRA_TOKEND_AZ`` or ``/work/venvs/az/bin/az`` (tests/tools.sh with
``ENTRA_TOKEND_INSTALL_AZ=1`` installs it); without it the tests skip. CI runs them as a stage
of their own (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from endpoint.ep_helpers import EndpointDaemon
from testlib import jwt_claims

ARM_AUDIENCE = "https://management.core.windows.net/"
AZ = os.environ.get("ENTRA_TOKEND_AZ", "/work/venvs/az/bin/az")


class FakeArm:
    """Just enough ARM for ``az login``: cloud metadata and the subscription list."""

    def __init__(self, directory: Path, tenant_id: str) -> None:
        from entra_tokend.emulator.pki import make_tls

        self.tls = make_tls(directory)
        self.tenant_id = tenant_id
        self.subscription_id = str(uuid.uuid4())
        self.audiences: list[str] = []
        arm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body, status = arm.answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str, authorization: str) -> tuple[dict[str, Any], int]:
        """(JSON body, status) for one GET."""
        path = "/" + path.lstrip("/")  # az joins its base URL and paths with a double slash
        if path.startswith("/metadata/endpoints"):
            return self.metadata(), 200
        token = authorization.removeprefix("Bearer ")
        try:
            aud = jwt_claims(token)["aud"]
        except Exception:
            return {"error": {"code": "InvalidAuthenticationToken"}}, 401
        self.audiences.append(aud)
        if aud != ARM_AUDIENCE:
            return {"error": {"code": "InvalidAuthenticationTokenAudience", "aud": aud}}, 401
        if path.startswith("/subscriptions?") or path.startswith("/subscriptions/?"):
            subscription = {
                "id": f"/subscriptions/{self.subscription_id}",
                "subscriptionId": self.subscription_id,
                "tenantId": self.tenant_id,
                "displayName": "emulated",
                "state": "Enabled",
            }
            return {"value": [subscription]}, 200
        if path.startswith("/tenants"):
            return {"value": [{"tenantId": self.tenant_id}]}, 200
        return {"error": {"code": "NotFound", "path": path}}, 404

    def metadata(self) -> dict[str, Any]:
        """ARM's cloud metadata document (what ``az cloud register`` reads)."""
        return {
            "name": "Emulated",
            "resourceManager": self.url,
            "suffixes": {},
            "galleryEndpoint": self.url,
            "graphEndpoint": "https://graph.windows.net/",
            "portalEndpoint": self.url,
            "authentication": {
                "loginEndpoint": "https://login.microsoftonline.com",
                "audiences": [ARM_AUDIENCE, "https://management.azure.com/"],
            },
        }

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def arm(ep: EndpointDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeArm]:
    if not Path(AZ).is_file():
        missing = f"az is not installed at {AZ} (ENTRA_TOKEND_INSTALL_AZ=1 tests/tools.sh)"
        if os.environ.get("ENTRA_TOKEND_INSTALL_AZ") == "1":  # CI's az stage: must run
            pytest.fail(missing)
        pytest.skip(missing)
    fake = FakeArm(tmp_path_factory.mktemp("arm"), ep.emulator.tenant_id)
    try:
        yield fake
    finally:
        fake.stop()


def _az(ep: EndpointDaemon, arm: FakeArm, config: Path, *args: str) -> Any:
    env = ep.sdk_env(
        AZURE_CONFIG_DIR=str(config),
        REQUESTS_CA_BUNDLE=str(arm.tls.ca_cert),
        AZURE_CORE_COLLECT_TELEMETRY="no",
        AZURE_CORE_NO_COLOR="yes",
    )
    result = subprocess.run(
        [AZ, *args, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout) if result.stdout.strip() else None


@pytest.fixture(scope="module")
def logged_in(ep: EndpointDaemon, arm: FakeArm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tmp_path_factory.mktemp("azure-config")
    _az(
        ep,
        arm,
        config,
        "cloud",
        "register",
        "--name",
        "Emulated",
        "--endpoint-resource-manager",
        arm.url,
    )
    _az(ep, arm, config, "cloud", "set", "--name", "Emulated")
    accounts = _az(ep, arm, config, "login", "--identity")
    assert [a["id"] for a in accounts] == [arm.subscription_id]
    return config


def test_az_login_identity_lists_subscriptions_with_the_classic_arm_audience(
    arm: FakeArm, logged_in: Path
) -> None:
    assert logged_in.is_dir()
    assert arm.audiences
    assert set(arm.audiences) == {ARM_AUDIENCE}


def test_az_account_get_access_token_keeps_the_slash(
    ep: EndpointDaemon, arm: FakeArm, logged_in: Path
) -> None:
    got = _az(ep, arm, logged_in, "account", "get-access-token", "--resource", ARM_AUDIENCE)
    assert jwt_claims(got["accessToken"])["aud"] == ARM_AUDIENCE
    scopes = [r.form.get("scope") for r in ep.emulator.token_requests()]
    assert "https://management.core.windows.net//.default" in scopes
