"""Pod templates, workloads and annotation sets shared by the injection tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

P = "entra-tokend.io/"
IMAGE = "registry.example.com/entra-tokend:9.9.9"
STORAGE = "https://storage.azure.com/.default"
ARM = "https://management.azure.com/.default"

# The annotation combinations every workload kind is validated with.
COMBINATIONS: dict[str, dict[str, str]] = {
    "tokens": {P + "inject": "true", P + "token.arm": ARM, P + "token.storage.json": STORAGE},
    "config": {P + "inject": "true", P + "config": "entra-tokend"},
    "endpoint": {P + "inject": "true", P + "token.storage": STORAGE, P + "endpoint": "true"},
    "endpoint-secret": {
        P + "inject": "true",
        P + "endpoint": "true",
        P + "endpoint-allow": "https://vault.azure.net,https://storage.azure.com",
        P + "endpoint-secret": "entra-tokend-endpoint",
    },
    "init": {P + "inject": "true", P + "token.arm": ARM, P + "mode": "init"},
    "everything": {
        P + "inject": "true",
        P + "token.arm": ARM,
        P + "config": "entra-tokend",
        P + "endpoint": "true",
        P + "containers": "app",
        P + "image": "registry.example.com/custom:1",
        P + "mount-path": "/tokens",
        P + "share-process-namespace": "true",
    },
}

# (annotations to set on top of a valid pod, the annotation the message must name first).
MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "inject-not-boolean": ({P + "inject": "yes"}, P + "inject"),
    "token-name": ({P + "token.-arm": ARM}, P + "token.-arm"),
    "token-two-scopes": ({P + "token.arm": f"{ARM} {STORAGE}"}, P + "token.arm"),
    "config-name": ({P + "config": "Not_A_Name"}, P + "config"),
    "endpoint-not-boolean": ({P + "endpoint": "on"}, P + "endpoint"),
    "endpoint-allow-empty-item": (
        {P + "endpoint": "true", P + "endpoint-allow": "https://vault.azure.net,,x"},
        P + "endpoint-allow",
    ),
    "endpoint-allow-quote": ({P + "endpoint-allow": 'https://a"b'}, P + "endpoint-allow"),
    "endpoint-secret-name": ({P + "endpoint-secret": "UPPER"}, P + "endpoint-secret"),
    "containers-unknown": ({P + "containers": "app,nope"}, P + "containers"),
    "containers-empty": ({P + "containers": ""}, P + "containers"),
    "mode": ({P + "mode": "daemon"}, P + "mode"),
    "image-space": ({P + "image": "my image"}, P + "image"),
    "mount-path-relative": ({P + "mount-path": "tokens"}, P + "mount-path"),
    "mount-path-dotdot": ({P + "mount-path": "/a/../etc"}, P + "mount-path"),
    "share-process-namespace": (
        {P + "share-process-namespace": "1"},
        P + "share-process-namespace",
    ),
    "unknown-annotation": ({P + "tokens": "arm"}, P + "tokens"),
    "endpoint-in-init-mode": ({P + "endpoint": "true", P + "mode": "init"}, P + "endpoint"),
    "nothing-to-fetch": ({P + "token.arm": None}, P + "inject"),
    # What YAML makes of an unquoted value (the API server would refuse it, inject says why).
    "unquoted-boolean": ({P + "endpoint": True}, P + "endpoint"),
    "unquoted-number": ({P + "token.arm": 5}, P + "token.arm"),
}


def template(
    annotations: dict[str, str] | None = None,
    *,
    labels: dict[str, str] | None = None,
    containers: tuple[str, ...] = ("app",),
) -> dict[str, Any]:
    """A pod template as teams write them, with the workload identity label by default."""
    return {
        "metadata": {
            "labels": {"app.kubernetes.io/name": "example", "azure.workload.identity/use": "true"}
            if labels is None
            else labels,
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "serviceAccountName": "example",
            "containers": [
                {"name": name, "image": "registry.example.com/app:1", "args": ["serve"]}
                for name in containers
            ],
        },
    }


def valid_annotations() -> dict[str, str]:
    return {P + "inject": "true", P + "token.arm": ARM}


def malformed_template(case: str) -> tuple[dict[str, Any], str]:
    """The template of a MALFORMED case (a None value removes that annotation), and the
    annotation its message must name."""
    changes, named = MALFORMED[case]
    annotations: dict[str, Any] = valid_annotations()
    for key, value in changes.items():
        if value is None:
            annotations.pop(key)
        else:
            annotations[key] = value
    return template(annotations), named


def workload(kind: str, pod_template: dict[str, Any], name: str = "example") -> dict[str, Any]:
    """A manifest of ``kind`` around ``pod_template`` (a Pod: the template itself)."""
    pod = copy.deepcopy(pod_template)
    meta = {"name": name, "labels": {"app.kubernetes.io/name": "example"}}
    selector = {"matchLabels": {"app.kubernetes.io/name": "example"}}
    if kind == "Pod":
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**pod["metadata"], "name": name},
            "spec": pod["spec"],
        }
    if kind in ("Job", "CronJob"):
        pod["spec"]["restartPolicy"] = "OnFailure"
        job = {"template": pod}
        if kind == "Job":
            return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job}
        return {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta,
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": job}},
        }
    spec: dict[str, Any] = {"selector": selector, "template": pod}
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}


KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")


def pod_template_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template inside a manifest of one of KINDS."""
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        found: dict[str, Any] = doc["spec"]["jobTemplate"]["spec"]["template"]
        return found
    template: dict[str, Any] = doc["spec"]["template"]
    return template


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        *parents, last = path
        node: Any = pod
        for key in parents:
            node = node[key]
        node[last] = value

    return change


# Fields of the wrong JSON type (what a hand-written YAML or a hostile review can hold): the
# change to a valid template, the field the one-line refusal must name.
MALFORMED_SHAPES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "containers-of-strings": (_set("spec", "containers", value=["app"]), "spec.containers[0]"),
    "labels-a-list": (_set("metadata", "labels", value=["x"]), "metadata.labels"),
    "env-of-null": (
        _set("spec", "containers", 0, "env", value=[None]),
        "spec.containers[0].env[0]",
    ),
    "mounts-a-string": (
        _set("spec", "containers", 0, "volumeMounts", value="x"),
        "spec.containers[0].volumeMounts",
    ),
    "skip-containers-a-number": (
        _set("metadata", "annotations", "azure.workload.identity/skip-containers", value=5),
        "azure.workload.identity/skip-containers",
    ),
    "spec-a-list": (_set("spec", value=["x"]), "spec"),
    "volumes-of-strings": (_set("spec", "volumes", value=["v"]), "spec.volumes[0]"),
    "container-without-name": (
        _set("spec", "containers", value=[{"image": "x"}]),
        "spec.containers[0].name",
    ),
    "security-context-a-string": (
        _set("spec", "securityContext", value="x"),
        "spec.securityContext",
    ),
}


def malformed_shape(case: str) -> tuple[dict[str, Any], str]:
    """A valid annotated template with the MALFORMED_SHAPES change applied, and the field named."""
    change, named = MALFORMED_SHAPES[case]
    pod = template(valid_annotations())
    change(pod)
    return pod, named
