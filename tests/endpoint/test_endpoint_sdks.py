"""Real SDKs against the daemon's managed-identity endpoint (emulator as Entra).

Each SDK runs in its own process with only IDENTITY_ENDPOINT and IDENTITY_HEADER set (no
AZURE_* variables), as an app container would; the expiry each reports must be the one the
daemon served.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from support.endpoint import NPM_DIR, SDK_DIR, EndpointDaemon, run_python

STORAGE = "https://storage.azure.com"

AZURE_IDENTITY = """
import json, sys
from azure.identity import {cls}
token = {cls}().get_token("https://storage.azure.com/.default")
print(json.dumps({{"token": token.token, "expires_on": token.expires_on}}))
"""

MSAL = """
import json, time, msal, requests
client = msal.ManagedIdentityClient(
    msal.SystemAssignedManagedIdentity(), http_client=requests.Session())
before = int(time.time())
result = client.acquire_token_for_client(resource="https://storage.azure.com")
after = int(time.time())
print(json.dumps({"token": result.get("access_token"), "expires_in": result.get("expires_in"),
                  "before": before, "after": after, "error": result.get("error")}))
"""


@pytest.mark.parametrize("cls", ["ManagedIdentityCredential", "DefaultAzureCredential"])
def test_azure_identity_gets_the_served_token(ep: EndpointDaemon, cls: str) -> None:
    status, served = ep.get(STORAGE)
    assert status == 200
    got = run_python(AZURE_IDENTITY.format(cls=cls), ep.sdk_env())
    assert got["token"] == served["access_token"]
    assert got["expires_on"] == int(served["expires_on"])


def test_msal_managed_identity_client_gets_the_served_token(ep: EndpointDaemon) -> None:
    status, served = ep.get(STORAGE)
    assert status == 200
    got = run_python(MSAL, ep.sdk_env())
    assert got["error"] is None
    assert got["token"] == served["access_token"]
    # MSAL reports expires_in = expires_on - int(time.time()) at the moment it parses the answer.
    expires_on = int(served["expires_on"])
    assert got["before"] + got["expires_in"] <= expires_on <= got["after"] + got["expires_in"]


def test_azure_identity_with_client_id_selects_the_other_identity(ep: EndpointDaemon) -> None:
    code = (
        "import json; from azure.identity import ManagedIdentityCredential as C\n"
        f"t = C(client_id={ep.other_client_id!r}).get_token('https://vault.azure.net/.default')\n"
        "print(json.dumps({'token': t.token, 'expires_on': t.expires_on}))"
    )
    got = run_python(code, ep.sdk_env())
    status, served = ep.get("https://vault.azure.net", client_id=ep.other_client_id)
    assert status == 200
    assert served["client_id"] == ep.other_client_id
    assert (got["token"], got["expires_on"]) == (served["access_token"], int(served["expires_on"]))


def test_javascript_azure_identity_gets_the_served_token(ep: EndpointDaemon) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (tests/tools.sh installs @azure/identity with npm)")
    if not (NPM_DIR / "node_modules" / "@azure" / "identity").is_dir():
        pytest.skip("@azure/identity is not installed: run tests/tools.sh")
    status, served = ep.get(STORAGE)
    assert status == 200
    result = subprocess.run(
        [node, str(SDK_DIR / "mi_probe.mjs"), "https://storage.azure.com/.default"],
        env=ep.sdk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["token"] == served["access_token"]
    # The SDK (MSAL for Node underneath) turns expires_on into whole seconds from its own
    # clock and back, so its expiry can end one second early when a second ticks in between.
    served_ms = int(served["expires_on"]) * 1000
    assert served_ms - 1000 <= got["expiresOnTimestamp"] <= served_ms


def test_served_tokens_live_longer_than_the_sdk_refresh_offset(ep: EndpointDaemon) -> None:
    status, served = ep.get(STORAGE)
    assert status == 200
    assert int(served["expires_on"]) - time.time() > 300
