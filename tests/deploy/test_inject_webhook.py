"""`entra-tokend webhook` over real TLS: AdmissionReview bodies shaped as the API server sends them;
the JSON Patch it answers, applied with a JSON Patch library, gives exactly `inject`'s result."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from entra_tokend.emulator import pki
from entra_tokend.emulator._crypto import private_pem
from entra_tokend.inject import inject_template
from support import DaemonProcess, base_env
from support.inject import COMBINATIONS, IMAGE, MALFORMED, malformed_template, template

SERVICE = "entra-tokend-webhook.entra-tokend-system.svc"


def api_server_pod(pod_template: dict[str, Any]) -> dict[str, Any]:
    """A Pod as the ReplicaSet controller creates it, after the API server's defaulting: the
    template plus generateName, ownerReferences, the service-account token volume and defaults."""
    pod = copy.deepcopy(pod_template)
    meta = pod["metadata"]
    meta["labels"]["pod-template-hash"] = "7d9c8b5f4"
    meta.update(
        generateName="example-7d9c8b5f4-",
        namespace="team-a",
        ownerReferences=[
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "example-7d9c8b5f4",
                "uid": "0f0e4c8a-6a52-4c7e-9d7a-1d8f0b3f2a11",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    )
    spec = pod["spec"]
    spec.update(
        restartPolicy="Always",
        terminationGracePeriodSeconds=30,
        dnsPolicy="ClusterFirst",
        securityContext={},
        schedulerName="default-scheduler",
        enableServiceLinks=True,
        preemptionPolicy="PreemptLowerPriority",
        priority=0,
        tolerations=[
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
        volumes=[
            {
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
                    ],
                },
            }
        ],
    )
    for c in spec["containers"]:
        c.update(
            resources={},
            terminationMessagePath="/dev/termination-log",
            terminationMessagePolicy="File",
            imagePullPolicy="IfNotPresent",
            volumeMounts=[
                {
                    "name": "kube-api-access-x7k2p",
                    "readOnly": True,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }
            ],
        )
    pod["status"] = {}
    return {"apiVersion": "v1", "kind": "Pod", **pod}


def admission_review(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5b7c3c1e-55d4-4f77-8a53-0b8f3b6f4c21",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def issue(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A CA of its own (fresh keys) and a certificate for the Service's name, in ``tmp_path/name``
    (``cert.pem``, ``key.pem``). Returns (the CA file, that directory)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = tmp_path / name
    directory.mkdir()
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = pki.make_ca(ca_key, f"webhook CA {name}")
    leaf = pki.issue_leaf(ca_key, ca, key, dns_names=[SERVICE], ips=["127.0.0.1"])
    (tmp_path / f"ca-{name}.pem").write_bytes(pki.pem(ca))
    (directory / "cert.pem").write_bytes(pki.pem(leaf))
    (directory / "key.pem").write_bytes(private_pem(key))
    return tmp_path / f"ca-{name}.pem", directory


class Webhook:
    def __init__(self, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]) -> None:
        self.tls_dir = tmp_path / "tls"
        self.tls_dir.mkdir()
        self.ca, first = issue(tmp_path, "first")
        self.swap_to(first)
        for name, source in (("tls.crt", "cert.pem"), ("tls.key", "key.pem")):
            (self.tls_dir / name).symlink_to(f"..data/{source}")
        self.process = daemon_factory(
            "webhook", "--listen", "127.0.0.1:0", "--image", IMAGE,
            "--tls-cert", str(self.tls_dir / "tls.crt"), "--tls-key", str(self.tls_dir / "tls.key"),
        )  # fmt: skip
        address = self.process.wait_event("webhook listening", timeout=30)["address"]
        self.port = int(address.rpartition(":")[2])

    def swap_to(self, directory: Path) -> None:
        """Point ``..data`` at ``directory`` in one rename, as kubelet updates a Secret volume."""
        link = self.tls_dir / f"..data_tmp_{directory.name}"
        link.symlink_to(directory)
        os.replace(link, self.tls_dir / "..data")

    def request(
        self, method: str, path: str, body: bytes | None = None, ca: Path | None = None
    ) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(ca or self.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=30)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def review(self, body: dict[str, Any]) -> dict[str, Any]:
        status, payload = self.request("POST", "/mutate?timeout=10s", json.dumps(body).encode())
        assert status == 200, payload
        answer: dict[str, Any] = json.loads(payload)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        response: dict[str, Any] = answer["response"]
        assert response["uid"] == body["request"]["uid"]
        return response


@pytest.fixture
def webhook(tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]) -> Iterator[Webhook]:
    hook = Webhook(tmp_path, daemon_factory)
    yield hook
    hook.process.stop()


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, patch)
    return result


def inject_cli(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`entra-tokend inject` on the same pods, as YAML."""
    text = "".join("---\n" + yaml.safe_dump(p) for p in pods)
    result = subprocess.run(
        [sys.executable, "-m", "entra_tokend", "inject", "--image", IMAGE],
        input=text, capture_output=True, text=True, env=base_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_patches_give_exactly_the_inject_result(webhook: Webhook) -> None:
    pods = [api_server_pod(template(a, containers=("app", "b"))) for a in COMBINATIONS.values()]
    expected = inject_cli(pods)
    for pod, want in zip(pods, expected, strict=True):
        response = webhook.review(admission_review(pod))
        assert "patch" in response
        result = patched(pod, response)
        assert result == want
        assert result == inject_template(pod, IMAGE)
        # Reinvoked with its own result (reinvocationPolicy: IfNeeded): no further change.
        again = webhook.review(admission_review(result))
        assert again["allowed"] is True
        assert "patch" not in again
    outcomes = [e["outcome"] for e in webhook.process.events() if e["event"] == "admission review"]
    assert outcomes == ["injected", "unchanged"] * len(pods)


def test_a_pod_without_annotations_or_opted_out_gets_no_patch(webhook: Webhook) -> None:
    for asked in ({}, {"entra-tokend.io/inject": "false"}):
        response = webhook.review(admission_review(api_server_pod(template(asked))))
        assert response == {"uid": response["uid"], "allowed": True}


def test_other_operations_and_kinds_are_allowed_unchanged(webhook: Webhook) -> None:
    pod = api_server_pod(template(COMBINATIONS["tokens"]))
    update = webhook.review(admission_review(pod, operation="UPDATE"))
    assert update == {"uid": update["uid"], "allowed": True}
    body = admission_review(pod)
    body["request"]["kind"] = {"group": "", "version": "v1", "kind": "Binding"}
    other = webhook.review(body)
    assert other == {"uid": other["uid"], "allowed": True}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_annotation_is_refused_naming_it(webhook: Webhook, case: str) -> None:
    source, named = malformed_template(case)
    response = webhook.review(admission_review(api_server_pod(source)))
    assert response["allowed"] is False
    assert "patch" not in response
    assert response["status"]["code"] == 400
    assert f"{named}: " in response["status"]["message"]
    assert response["status"]["message"].startswith("entra-tokend: ")


def test_requests_that_are_no_admission_review_get_400(webhook: Webhook) -> None:
    assert webhook.request("POST", "/mutate", b"{not json")[0] == 400
    beta = admission_review(api_server_pod(template()))
    beta["apiVersion"] = "admission.k8s.io/v1beta1"
    status, payload = webhook.request("POST", "/mutate", json.dumps(beta).encode())
    assert (status, b"admissionReviewVersions" in payload) == (400, True)
    assert webhook.request("POST", "/other", b"{}")[0] == 404
    assert webhook.request("GET", "/healthz") == (200, b"ok\n")


def test_tls_is_verified_and_a_renewed_certificate_is_served_without_restart(
    webhook: Webhook, tmp_path: Path
) -> None:
    new_ca, renewed = issue(tmp_path, "renewed")
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.request("GET", "/healthz", ca=new_ca)
    webhook.swap_to(renewed)
    assert webhook.request("GET", "/healthz", ca=new_ca) == (200, b"ok\n")
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.request("GET", "/healthz")  # the old CA no longer matches
    assert webhook.process.proc.poll() is None


def test_sigterm_stops_it(webhook: Webhook) -> None:
    webhook.process.signal(signal.SIGTERM)
    assert webhook.process.proc.wait(30) == 0


def test_unusable_tls_files_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "entra_tokend", "webhook", "--listen", "127.0.0.1:0",
         "--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(tmp_path / "none.key")],
        capture_output=True, text=True, env=base_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tls-cert" in result.stderr
