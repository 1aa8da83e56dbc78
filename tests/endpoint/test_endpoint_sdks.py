"""Real SDKs against the daemon's managed-identity endpoint (emulator as Entra).

Each SDK runs in its own process with only IDENTITY_ENDPOINT and IDENTITY_HEADER set (no
AZURE_* variables), as an app container would; the expiry each reports must be the one the
daemon served.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest

from endpoint.ep_helpers import NPM_DIR, SDK_DIR, EndpointDaemon, run_python
from testlib import jwt_claims

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


# ---- every identity selector (issue 23 §3) ---------------------------------------------------

MI_WITH_CONFIG = """
import json
from azure.identity import ManagedIdentityCredential
t = ManagedIdentityCredential(identity_config={config!r}).get_token("{scope}")
print(json.dumps({{"token": t.token, "expires_on": t.expires_on}}))
"""

MSAL_USER_ASSIGNED = """
import json, msal, requests
client = msal.ManagedIdentityClient(
    msal.UserAssignedManagedIdentity({kind}={value!r}), http_client=requests.Session())
result = client.acquire_token_for_client(resource="{resource}")
print(json.dumps({{"token": result.get("access_token"), "error": result.get("error"),
                  "description": result.get("error_description")}}))
"""

VAULT = "https://vault.azure.net"


def _selector_value(ep: EndpointDaemon, kind: str) -> str:
    return {
        "client_id": ep.other_client_id,
        "object_id": ep.other_object_id,
        "resource_id": ep.other_resource_id,
    }[kind]


@pytest.mark.parametrize("kind", ["object_id", "resource_id"])
def test_azure_identity_selects_by_object_and_resource_id(ep: EndpointDaemon, kind: str) -> None:
    config = {kind: _selector_value(ep, kind)}
    got = run_python(MI_WITH_CONFIG.format(config=config, scope=VAULT + "/.default"), ep.sdk_env())
    status, served = ep.get(VAULT, client_id=ep.other_client_id)
    assert status == 200
    assert got["token"] == served["access_token"]
    assert jwt_claims(got["token"])["appid"] == ep.other_client_id


@pytest.mark.parametrize("kind", ["client_id", "object_id", "resource_id"])
def test_msal_user_assigned_selects_by_each_selector(ep: EndpointDaemon, kind: str) -> None:
    code = MSAL_USER_ASSIGNED.format(kind=kind, value=_selector_value(ep, kind), resource=VAULT)
    got = run_python(code, ep.sdk_env())
    assert got["error"] is None, got["description"]
    assert jwt_claims(got["token"])["appid"] == ep.other_client_id


def _node(ep: EndpointDaemon, probe: str, *args: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (tests/tools.sh installs the npm packages)")
    if not (NPM_DIR / "node_modules" / "@azure" / "msal-node").is_dir():
        pytest.skip("@azure/msal-node is not installed: run tests/tools.sh")
    result = subprocess.run(
        [node, str(SDK_DIR / probe), *args],
        env=ep.sdk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


@pytest.mark.parametrize("kind", ["clientId", "objectId", "resourceId"])
def test_javascript_azure_identity_selects_by_each_selector(ep: EndpointDaemon, kind: str) -> None:
    value = _selector_value(
        ep, {"clientId": "client_id", "objectId": "object_id"}.get(kind, "resource_id")
    )
    got = _node(ep, "mi_probe.mjs", VAULT + "/.default", f"{kind}={value}")
    assert jwt_claims(got["token"])["appid"] == ep.other_client_id


@pytest.mark.parametrize(
    "selector",
    ["", "userAssignedClientId", "userAssignedObjectId", "userAssignedResourceId"],
)
def test_msal_node_gets_tokens_for_system_and_each_user_assigned_selector(
    ep: EndpointDaemon, selector: str
) -> None:
    if not selector:
        got = _node(ep, "msal_probe.mjs", STORAGE)
        assert jwt_claims(got["token"])["appid"] == ep.emulator.client_id
        return
    kind = {"userAssignedClientId": "client_id", "userAssignedObjectId": "object_id"}
    value = _selector_value(ep, kind.get(selector, "resource_id"))
    got = _node(ep, "msal_probe.mjs", VAULT, f"{selector}={value}")
    assert jwt_claims(got["token"])["appid"] == ep.other_client_id


def test_database_audience_keeps_its_slash_through_azure_identity(ep: EndpointDaemon) -> None:
    # go-mssqldb and azure-sdk-for-go ask for https://database.windows.net/ (the v1 audience).
    code = AZURE_IDENTITY.format(cls="ManagedIdentityCredential").replace(
        "https://storage.azure.com/.default", "https://database.windows.net//.default"
    )
    got = run_python(code, ep.sdk_env())
    assert jwt_claims(got["token"])["aud"] == "https://database.windows.net/"


@pytest.mark.parametrize("selector", [False, True])
def test_a_2017_09_01_client_from_the_docs_gets_the_served_token(
    ep: EndpointDaemon, selector: bool
) -> None:
    env = {k: v for k, v in ep.sdk_env().items() if not k.startswith("IDENTITY_")}
    env.update(MSI_ENDPOINT=ep.url, MSI_SECRET=ep.secret)
    resource = VAULT if selector else STORAGE
    args = [resource, ep.other_client_id] if selector else [resource]
    result = subprocess.run(
        [sys.executable, str(SDK_DIR / "msi2017_client.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout)
    status, served = (
        ep.get(resource, client_id=ep.other_client_id) if selector else ep.get(resource)
    )
    assert status == 200
    assert (got["token"], got["expires_on"]) == (served["access_token"], int(served["expires_on"]))
    assert got["resource"] == resource


DENIED = """
import json
from azure.identity import ManagedIdentityCredential
try:
    ManagedIdentityCredential().get_token("https://not-allowed.example/.default")
    print(json.dumps({"error": None}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def test_a_denied_sdk_call_names_entra_tokends_allow_list(ep: EndpointDaemon) -> None:
    got = run_python(DENIED, ep.sdk_env())
    assert got["error"] == "CredentialUnavailableError"
    assert "entra-tokend's [endpoint] allow list" in got["message"]
    assert '"https://not-allowed.example"' in got["message"]  # the entry to add
    assert ep.secret not in got["message"]
