"""The admission webhook as the API server meets it: real TLS from a Secret-style volume, and
AdmissionReview bodies shaped as the API server sends them (for the webhook's tests)."""

from __future__ import annotations

import copy
import http.client
import json
import os
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entra_tokend.emulator import pki
from entra_tokend.emulator._crypto import private_pem
from support.inject import IMAGE
from support.processes import DaemonProcess

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
