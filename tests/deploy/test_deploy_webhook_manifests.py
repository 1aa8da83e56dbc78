"""config/kubernetes/webhook/: the injector's install manifests fit together and with the CLI."""

from __future__ import annotations

from typing import Any

import yaml

from entra_tokend.inject import requested
from entra_tokend.webhook import build_parser
from support.deploy import K8S_DIR

DIR = K8S_DIR / "webhook"


def docs(file_name: str) -> dict[str, dict[str, Any]]:
    """The documents of ``DIR/file_name`` by kind (one of each)."""
    found = [d for d in yaml.safe_load_all((DIR / file_name).read_text()) if d]
    by_kind = {d["kind"]: d for d in found}
    assert len(by_kind) == len(found)
    return by_kind


def test_the_configuration_calls_the_service_for_new_pods_only() -> None:
    manifests = docs("webhook.yaml")
    (hook,) = manifests["MutatingWebhookConfiguration"]["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["failurePolicy"] in ("Fail", "Ignore")
    (rule,) = hook["rules"]
    assert (rule["operations"], rule["resources"], rule["apiGroups"]) == (
        ["CREATE"],
        ["pods"],
        [""],
    )
    assert hook["objectSelector"] == {"matchLabels": {"azure.workload.identity/use": "true"}}
    service = manifests["Service"]
    ref = hook["clientConfig"]["service"]
    assert (ref["name"], ref["namespace"]) == (
        service["metadata"]["name"],
        service["metadata"]["namespace"],
    )
    assert ref["path"] == "/mutate"
    (port,) = service["spec"]["ports"]
    assert ref["port"] == port["port"]
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn"
    assert {"kube-system", service["metadata"]["namespace"]} <= set(excluded["values"])
    # Sorts before azure-workload-identity's configuration, which the API server calls next.
    name = manifests["MutatingWebhookConfiguration"]["metadata"]["name"]
    assert name < "azure-wi-webhook-mutating-webhook-configuration"


def test_the_deployment_serves_the_service_port_with_the_secret_tls() -> None:
    manifests = docs("webhook.yaml")
    deployment = manifests["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert (
        deployment["metadata"]["namespace"]
        == docs("namespace.yaml")["Namespace"]["metadata"]["name"]
    )
    (container,) = spec["containers"]
    args = build_parser().parse_args(container["args"][1:])
    assert container["args"][0] == "webhook"
    assert args.listen.endswith(":8443")
    (https,) = container["ports"]
    assert https["containerPort"] == 8443
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] == https["name"]
    (mount,) = container["volumeMounts"]
    (volume,) = spec["volumes"]
    assert mount["name"] == volume["name"]
    assert mount["readOnly"] is True
    assert args.tls_cert == f"{mount['mountPath']}/tls.crt"
    assert args.tls_key == f"{mount['mountPath']}/tls.key"
    secret = volume["secret"]["secretName"]
    certificate = docs("webhook-cert-manager.yaml")["Certificate"]["spec"]
    assert certificate["secretName"] == secret
    service = manifests["Service"]["metadata"]
    assert f"{service['name']}.{service['namespace']}.svc" in certificate["dnsNames"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {
            "scheme": "HTTPS",
            "path": "/healthz",
            "port": "https",
        }
    assert args.image == container["image"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"]
    assert sc["runAsNonRoot"]
    assert not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False  # it calls no Kubernetes API


def test_the_webhook_never_handles_its_own_pods() -> None:
    """Its pods neither match the object selector nor ask for injection: no bootstrap deadlock."""
    manifests = docs("webhook.yaml")
    (hook,) = manifests["MutatingWebhookConfiguration"]["webhooks"]
    template = manifests["Deployment"]["spec"]["template"]
    selector = hook["objectSelector"]["matchLabels"]
    assert not selector.items() <= template["metadata"]["labels"].items()
    assert not requested(template)
