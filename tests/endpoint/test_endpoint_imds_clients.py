"""Real clients of the IMDS protocol against the daemon (``[endpoint] imds = true``), and the
fail-fast answer for an identity Entra rejects.

azure-identity and MSAL Python take ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` as IMDS's base URL
when no App Service variables are set; librdkafka (the ``confluent-kafka`` wheel) fetches its
OAUTHBEARER token with ``sasl.oauthbearer.metadata.authentication.type=azure_imds`` from the URL
in ``sasl.oauthbearer.token.endpoint.url`` — no broker needed to see the token set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from endpoint.ep_helpers import EndpointDaemon, run_python
from testlib import DAEMON_SRC, jwt_claims, samples

STORAGE = "https://storage.azure.com"
VAULT = "https://vault.azure.net"
EVENTHUBS = "https://eventhubs.azure.net"


def _imds_env(ep: EndpointDaemon) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = ep.imds_base
    return env


AZURE_IDENTITY_IMDS = """
import json
from azure.identity import ManagedIdentityCredential
t = ManagedIdentityCredential({kwargs}).get_token("{scope}")
print(json.dumps({{"token": t.token, "expires_on": t.expires_on}}))
"""

MSAL_IMDS = """
import json, msal, requests
identity = {identity}
client = msal.ManagedIdentityClient(identity, http_client=requests.Session())
result = client.acquire_token_for_client(resource="{resource}")
print(json.dumps({{"token": result.get("access_token"), "expires_in": result.get("expires_in"),
                  "error": result.get("error"), "description": result.get("error_description")}}))
"""


def test_azure_identity_through_imds(ep: EndpointDaemon) -> None:
    got = run_python(
        AZURE_IDENTITY_IMDS.format(kwargs="", scope=STORAGE + "/.default"), _imds_env(ep)
    )
    _, served = ep.imds()
    assert got["token"] == served["access_token"]
    assert got["expires_on"] == int(served["expires_on"])


@pytest.mark.parametrize("kind", ["client_id", "object_id", "resource_id"])
def test_azure_identity_through_imds_selects(ep: EndpointDaemon, kind: str) -> None:
    value = {
        "client_id": ep.other_client_id,
        "object_id": ep.other_object_id,
        "resource_id": ep.other_resource_id,
    }[kind]
    kwargs = f"identity_config={{{kind!r}: {value!r}}}"
    got = run_python(
        AZURE_IDENTITY_IMDS.format(kwargs=kwargs, scope=VAULT + "/.default"), _imds_env(ep)
    )
    assert jwt_claims(got["token"])["appid"] == ep.other_client_id


@pytest.mark.parametrize(
    "identity",
    [
        "msal.SystemAssignedManagedIdentity()",
        "msal.UserAssignedManagedIdentity(client_id={client_id!r})",
        "msal.UserAssignedManagedIdentity(object_id={object_id!r})",
        "msal.UserAssignedManagedIdentity(resource_id={resource_id!r})",
    ],
)
def test_msal_through_imds(ep: EndpointDaemon, identity: str) -> None:
    system = "System" in identity
    code = MSAL_IMDS.format(
        identity=identity.format(
            client_id=ep.other_client_id,
            object_id=ep.other_object_id,
            resource_id=ep.other_resource_id,
        ),
        resource=STORAGE if system else VAULT,
    )
    got = run_python(code, _imds_env(ep))
    assert got["error"] is None, got["description"]
    want = ep.emulator.client_id if system else ep.other_client_id
    assert jwt_claims(got["token"])["appid"] == want
    assert got["expires_in"] > 0


KAFKA = """
import logging, sys
from confluent_kafka import Producer
url, resource = sys.argv[1], sys.argv[2]
lines = []

class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())

log = logging.getLogger("rdkafka")
log.addHandler(Keep())
log.setLevel(logging.DEBUG)
producer = Producer({
    "bootstrap.servers": "127.0.0.1:1",
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "OAUTHBEARER",
    "sasl.oauthbearer.method": "oidc",
    "sasl.oauthbearer.metadata.authentication.type": "azure_imds",
    "sasl.oauthbearer.config": f"query=api-version=2018-02-01&resource={resource}",
    "sasl.oauthbearer.token.endpoint.url": url,
    "debug": "security",
}, logger=log)
for _ in range(100):
    producer.poll(0.2)
    if any("setting OAUTHBEARER token" in line for line in lines):
        break
print("\\n".join(lines))
"""


def test_librdkafka_gets_its_token_through_imds(ep: EndpointDaemon) -> None:
    pytest.importorskip("confluent_kafka")
    before = [r for r in ep.emulator.token_requests() if EVENTHUBS in r.form.get("scope", "")]
    url = ep.imds_base + "/metadata/identity/oauth2/token"
    result = subprocess.run(
        [sys.executable, "-c", KAFKA, url, EVENTHUBS],
        env={**_imds_env(ep), "PYTHONPATH": str(DAEMON_SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Waking up waiting broker threads after setting OAUTHBEARER token" in result.stdout
    after = [r for r in ep.emulator.token_requests() if EVENTHUBS in r.form.get("scope", "")]
    assert len(after) == len(before) + (0 if before else 1)
    _, served = ep.imds(f"api-version=2018-02-01&resource={EVENTHUBS}")
    assert jwt_claims(served["access_token"])["aud"] == EVENTHUBS


# ---- an identity Entra rejects fails fast, with the AADSTS code (issue 23 §2) ----------------

FAIL = """
import json, time
from azure.identity import ManagedIdentityCredential
started = time.monotonic()
try:
    ManagedIdentityCredential(client_id={client_id!r}).get_token("api://ghost/.default")
    print(json.dumps({{"error": None}}))
except Exception as exc:
    print(json.dumps({{"error": type(exc).__name__, "message": str(exc),
                      "seconds": time.monotonic() - started}}))
"""


def _endpoint_results(ep: EndpointDaemon) -> dict[str, float]:
    """``entra_tokend_endpoint_requests_total`` by ``result`` (non-zero ones)."""
    url = f"http://127.0.0.1:{ep.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for (name, labels), value in samples(text).items():
        if name == "entra_tokend_endpoint_requests_total" and value:
            result = dict(labels)["result"]
            found[result] = found.get(result, 0.0) + value
    return found


@pytest.mark.parametrize("protocol", ["appservice", "imds"])
def test_an_identity_entra_rejects_fails_fast_with_the_aadsts_code(
    ep: EndpointDaemon, protocol: str
) -> None:
    env = ep.sdk_env() if protocol == "appservice" else _imds_env(ep)
    # Bounded: without fail-fast, azure-identity retries a 5xx for ~100 s; the verdict does not
    # need them to end. How long the call takes is measured in bench/, not asserted here.
    before = _endpoint_results(ep)
    result = subprocess.run(
        [sys.executable, "-c", FAIL.format(client_id=ep.ghost_client_id)],
        env={**env, "PYTHONPATH": str(DAEMON_SRC)},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["error"] is not None
    assert "AADSTS700016" in got["message"]
    # Answered as the caller's to fix (4xx), so the SDK did not retry: it sent one request,
    # answered "error" at once (a 5xx would have brought its retry policy's 3 more).
    after = _endpoint_results(ep)
    results = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert set(results) == {"error"}
    assert results == {"error": 1}
