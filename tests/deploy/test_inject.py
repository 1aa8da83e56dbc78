"""inject.inject_template: the pure pod-template transformation behind `inject` and `webhook`."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from entra_tokend.inject import ANNOTATIONS, InjectError, inject_template
from support.inject import (
    ARM,
    COMBINATIONS,
    IMAGE,
    MALFORMED,
    STORAGE,
    P,
    malformed_template,
    template,
)


def by_name(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers if c["name"] == name]
    return found


def injected(annotations: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    return inject_template(template(annotations, **kwargs), IMAGE)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_injecting_twice_equals_injecting_once(combination: str) -> None:
    once = injected(COMBINATIONS[combination])
    assert once != template(COMBINATIONS[combination])
    assert inject_template(once, IMAGE) == once


@pytest.mark.parametrize("value", [None, "false"])
def test_no_annotation_or_false_leaves_the_pod_alone(value: str | None) -> None:
    annotations = {P + "token.arm": ARM, P + "endpoint": "true"}
    if value is not None:
        annotations[P + "inject"] = value
    source = template(annotations, labels={})  # not even the label is required then
    assert inject_template(source, IMAGE) == source


def test_the_argument_is_never_modified() -> None:
    source = template(COMBINATIONS["everything"])
    before = copy.deepcopy(source)
    inject_template(source, IMAGE)
    assert source == before


def test_native_sidecar_gates_the_app_and_writes_each_annotated_token() -> None:
    pod = injected(COMBINATIONS["tokens"])
    spec = pod["spec"]
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == IMAGE
    args = sidecar["args"]
    assert args[0] == "run"
    assert "--once" not in args
    tokens = [args[i + 1] for i, a in enumerate(args) if a == "--token"]
    assert tokens == [f"arm={ARM}", f"storage.json={STORAGE}"]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert args[args.index("--listen") + 1] == "[::]:9464"
    assert sidecar["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"]
    assert sc["readOnlyRootFilesystem"]
    assert not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 65532
    assert sidecar["resources"]["limits"]["memory"] == "128Mi"
    (volume,) = spec["volumes"]
    assert volume["emptyDir"]["medium"] == "Memory"
    out_dir = args[args.index("--output-dir") + 1]
    assert sidecar["volumeMounts"] == [{"name": volume["name"], "mountPath": out_dir}]
    (app,) = spec["containers"]
    assert app["volumeMounts"] == [{"name": volume["name"], "mountPath": out_dir, "readOnly": True}]
    assert "env" not in app  # no endpoint asked for
    assert spec["securityContext"]["fsGroup"] == 65532  # the 0640 files' group for the app
    meta = pod["metadata"]
    assert meta["labels"]["azure.workload.identity/use"] == "true"
    assert "azure.workload.identity/skip-containers" not in meta["annotations"]


def test_an_existing_fs_group_and_init_containers_are_kept() -> None:
    source = template(COMBINATIONS["tokens"])
    source["spec"]["securityContext"] = {"fsGroup": 2000}
    source["spec"]["initContainers"] = [{"name": "migrate", "image": "m:1"}]
    spec = inject_template(source, IMAGE)["spec"]
    assert spec["securityContext"] == {"fsGroup": 2000}
    assert [c["name"] for c in spec["initContainers"]] == ["entra-tokend", "migrate"]
    assert "volumeMounts" not in spec["initContainers"][1]


def test_endpoint_gives_the_apps_the_variables_and_no_federated_token() -> None:
    pod = injected(COMBINATIONS["endpoint"], containers=("app", "worker"))
    spec, annotations = pod["spec"], pod["metadata"]["annotations"]
    sidecar = by_name(spec["initContainers"], "entra-tokend")
    assert annotations["azure.workload.identity/skip-containers"] == "app;worker"
    config = tomllib.loads(annotations[P + "endpoint-config"])
    assert config == {
        "endpoint": {
            "listen": "127.0.0.1:8081",
            "secret_env": "IDENTITY_HEADER",
            "allow": ["https://storage.azure.com"],
        }
    }
    for app in spec["containers"]:
        env = env_of(app)
        assert env["IDENTITY_ENDPOINT"]["value"] == "http://127.0.0.1:8081/msi/token"
        assert (
            env["IDENTITY_HEADER"]["valueFrom"] == env_of(sidecar)["IDENTITY_HEADER"]["valueFrom"]
        )
        assert env["IDENTITY_HEADER"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    (config_volume,) = [v for v in spec["volumes"] if "downwardAPI" in v]
    (item,) = config_volume["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{P}endpoint-config']"
    args = sidecar["args"]
    assert args[args.index("--config") + 1] == f"/etc/entra-tokend/{item['path']}"


def test_endpoint_secret_and_allow_list() -> None:
    source = template(COMBINATIONS["endpoint-secret"])
    source["metadata"]["annotations"]["azure.workload.identity/skip-containers"] = "other"
    pod = inject_template(source, IMAGE)
    (app,) = pod["spec"]["containers"]
    assert env_of(app)["IDENTITY_HEADER"]["valueFrom"] == {
        "secretKeyRef": {"name": "entra-tokend-endpoint", "key": "identity-header"}
    }
    annotations = pod["metadata"]["annotations"]
    assert annotations["azure.workload.identity/skip-containers"] == "other;app"
    allow = tomllib.loads(annotations[P + "endpoint-config"])["endpoint"]["allow"]
    assert allow == ["https://vault.azure.net", "https://storage.azure.com"]
    assert "volumeMounts" not in app  # no token files asked for: only the endpoint


def test_config_map_chosen_containers_image_path_and_process_namespace() -> None:
    pod = injected(COMBINATIONS["everything"], containers=("app", "other"))
    spec = pod["spec"]
    sidecar = by_name(spec["initContainers"], "entra-tokend")
    assert sidecar["image"] == "registry.example.com/custom:1"
    assert spec["shareProcessNamespace"] is True
    (config_volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert config_volume["configMap"] == {"name": "entra-tokend"}
    assert P + "endpoint-config" not in pod["metadata"]["annotations"]  # the ConfigMap's TOML
    args = sidecar["args"]
    assert args[args.index("--output-dir") + 1] == "/tokens"
    assert args[args.index("--config") + 1] == "/etc/entra-tokend/entra-tokend.toml"
    app, other = spec["containers"]
    assert [m["mountPath"] for m in app["volumeMounts"]] == ["/tokens"]
    assert "volumeMounts" not in other
    assert "env" not in other
    skip = pod["metadata"]["annotations"]["azure.workload.identity/skip-containers"]
    assert skip == "app"


def test_init_mode_runs_once_as_a_regular_init_container() -> None:
    pod = injected(COMBINATIONS["init"])
    (init,) = pod["spec"]["initContainers"]
    assert "restartPolicy" not in init
    assert init["args"][:2] == ["run", "--once"]
    assert init["args"][init["args"].index("--listen") + 1] == ""  # no listener to probe
    assert not {"startupProbe", "livenessProbe", "readinessProbe", "ports"} & init.keys()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_annotation_is_refused_naming_it(case: str) -> None:
    source, named = malformed_template(case)
    with pytest.raises(InjectError) as caught:
        inject_template(source, IMAGE)
    assert [p for p in caught.value.problems if p.startswith(named + ":")], caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    source = template({P + "inject": "true", P + "mode": "x", P + "image": "a b"}, labels={})
    with pytest.raises(InjectError) as caught:
        inject_template(source, IMAGE)
    names = sorted(p.split(":")[0] for p in caught.value.problems)
    assert names == [P + "image", P + "inject", P + "inject", P + "mode"]


def test_a_pod_without_the_workload_identity_label_is_refused() -> None:
    for labels in ({}, {"azure.workload.identity/use": "false"}):
        with pytest.raises(InjectError, match=r'azure\.workload\.identity/use: "true"'):
            inject_template(template(COMBINATIONS["tokens"], labels=labels), IMAGE)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda s: s["spec"]["containers"].append({"name": "entra-tokend", "image": "x"}),
            "inject",
        ),
        (
            lambda s: (
                s["spec"]
                .setdefault("volumes", [])
                .append({"name": "entra-tokend-tokens", "emptyDir": {}})
            ),
            "inject",
        ),
        (
            lambda s: (
                s["spec"]["containers"][0]
                .setdefault("volumeMounts", [])
                .append({"name": "x", "mountPath": "/run/entra-tokend"})
            ),
            "mount-path",
        ),
        (
            lambda s: (
                s["spec"]["containers"][0]
                .setdefault("env", [])
                .append({"name": "IDENTITY_ENDPOINT", "value": "x"})
            ),
            "endpoint",
        ),
        (
            lambda s: s["metadata"]["annotations"].update(
                {"azure.workload.identity/skip-containers": "app;entra-tokend"}
            ),
            "skip-containers",
        ),
    ],
)
def test_what_would_clash_with_the_pod_is_refused(change: Any, named: str) -> None:
    source = template(COMBINATIONS["endpoint"])
    change(source)
    with pytest.raises(InjectError) as caught:
        inject_template(source, IMAGE)
    (problem,) = caught.value.problems
    assert problem.split(":")[0].endswith(named), problem


def test_changed_annotations_on_an_injected_pod_are_refused() -> None:
    once = injected(COMBINATIONS["tokens"])
    once["metadata"]["annotations"][P + "token.graph"] = "https://graph.microsoft.com/.default"
    with pytest.raises(InjectError, match=f"^{P}injected: "):
        inject_template(once, IMAGE)


def test_reinvocation_after_another_webhook_added_a_container_changes_nothing() -> None:
    """The azure-workload-identity webhook may add its proxy container and the AZURE_* variables
    after our injection; the API server then calls us again (reinvocationPolicy: IfNeeded)."""
    once = injected(COMBINATIONS["endpoint"])
    once["spec"]["containers"].append({"name": "azwi-proxy", "image": "proxy:1"})
    sidecar = by_name(once["spec"]["initContainers"], "entra-tokend")
    sidecar["env"].append({"name": "AZURE_CLIENT_ID", "value": "c"})
    assert inject_template(once, IMAGE) == once


def test_the_readme_documents_every_annotation_with_its_default() -> None:
    from support import REPO

    readme = (REPO / "README.md").read_text()
    for name in ANNOTATIONS:
        assert f"| `{P}{name}` |" in readme, name


def test_named_init_containers_get_the_tokens_too() -> None:
    source = template({**COMBINATIONS["endpoint"], P + "containers": "migrate,app"})
    source["spec"]["initContainers"] = [{"name": "migrate", "image": "m:1"}]
    pod = inject_template(source, IMAGE)
    sidecar, migrate = pod["spec"]["initContainers"]
    assert sidecar["name"] == "entra-tokend"  # first: its startupProbe gates "migrate"
    assert [m["readOnly"] for m in migrate["volumeMounts"]] == [True]
    assert set(env_of(migrate)) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}
    skip = pod["metadata"]["annotations"]["azure.workload.identity/skip-containers"]
    assert skip == "migrate;app"
