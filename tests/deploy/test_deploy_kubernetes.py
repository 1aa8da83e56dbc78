"""config/kubernetes/: schema-valid manifests with the properties the README promises."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import run_cli, tool
from support.config_keys import unknown_keys
from support.deploy import K8S_DIR, k8s_documents, k8s_kind

SIDECAR = "deployment-sidecar.yaml"
INIT_ONLY = "deployment-init.yaml"
ENDPOINT = "deployment-endpoint.yaml"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


WEBHOOK_FILES = ("webhook/namespace.yaml", "webhook/webhook.yaml")


def manifest(file_name: str) -> list[dict[str, Any]]:
    """The documents of a file under config/kubernetes (subdirectories too)."""
    return [d for d in yaml.safe_load_all((K8S_DIR / file_name).read_text()) if d is not None]


def deployment(file_name: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_documents()[file_name] if d["kind"] == "Deployment"]
    assert doc["kind"] == "Deployment"
    return doc


def pod_spec(file_name: str) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(file_name)["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def by_name(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers if c["name"] == name]
    return found


def configmap(file_name: str = "configmap.yaml") -> dict[str, Any]:
    (doc,) = [d for name, d in k8s_kind("ConfigMap") if name == file_name]
    return doc


def configmap_toml() -> dict[str, Any]:
    return tomllib.loads(configmap()["data"]["entra-tokend.toml"])


def tokend_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in all_containers(spec) if c["args"][0] == "run"]


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == port]
    assert isinstance(number, int)
    return number


def test_every_manifest_has_the_expected_kinds() -> None:
    kinds = sorted(d["kind"] for docs in k8s_documents().values() for d in docs)
    assert kinds == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Deployment",
        "NetworkPolicy",
        "PodMonitor",
        "ServiceAccount",
    ]
    for docs in k8s_documents().values():
        for doc in docs:
            assert doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("files", "version"),
    [
        # Native sidecars (initContainers[].restartPolicy) need 1.29.
        ((SIDECAR, "serviceaccount.yaml", "configmap.yaml"), "1.29"),
        ((ENDPOINT, "serviceaccount.yaml"), "1.29"),
        # The init-only variant is for older clusters.
        ((INIT_ONLY, "serviceaccount.yaml", "configmap.yaml"), "1.25"),
        *[(("networkpolicy.yaml", *WEBHOOK_FILES), v) for v in ("1.29", "1.32", "1.35")],
    ],
)
def test_manifests_validate_against_the_kubernetes_schema(
    files: tuple[str, ...], version: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            version,
            *(str(K8S_DIR / f) for f in files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    documents = sum(len(manifest(f)) for f in files)
    assert result.stdout.count("passed") == documents, result.stdout


def test_service_account_names_the_client_id() -> None:
    ((_, sa),) = k8s_kind("ServiceAccount")
    client_id = sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert GUID.match(client_id)
    for name in (SIDECAR, INIT_ONLY):
        assert pod_spec(name)["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("file_name", [SIDECAR, INIT_ONLY])
def test_pod_is_marked_for_workload_identity(file_name: str) -> None:
    template = deployment(file_name)["spec"]["template"]
    # The webhook matches the string "true"; a YAML boolean would not be a valid label.
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    # The app gets the access token only, never the federated credential.
    skipped = template["metadata"]["annotations"]["azure.workload.identity/skip-containers"]
    assert skipped.split(";") == ["app"]


@pytest.mark.parametrize("file_name", [SIDECAR, INIT_ONLY])
def test_every_container_is_locked_down(file_name: str) -> None:
    spec = pod_spec(file_name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert isinstance(spec["securityContext"]["fsGroup"], int)
    for c in all_containers(spec):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc.get("runAsUser", 1) != 0, c["name"]


@pytest.mark.parametrize("file_name", [SIDECAR, INIT_ONLY])
def test_tokens_live_in_memory_and_the_app_only_reads_them(file_name: str) -> None:
    spec = pod_spec(file_name)
    (tokens,) = [v for v in spec["volumes"] if "emptyDir" in v]
    assert tokens["emptyDir"]["medium"] == "Memory"
    output_dir = configmap_toml()["output_dir"]
    app = by_name(spec["containers"], "app")
    (app_mount,) = [m for m in app["volumeMounts"] if m["name"] == tokens["name"]]
    assert app_mount["readOnly"] is True
    assert [m["name"] for m in app["volumeMounts"]] == [tokens["name"]], "app sees no config"
    for c in tokend_containers(spec):
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == tokens["name"]]
        assert mount["mountPath"] == output_dir, c["name"]
        assert not mount.get("readOnly", False), c["name"]


@pytest.mark.parametrize("file_name", [SIDECAR, INIT_ONLY])
def test_daemon_reads_the_configmap_it_mounts(file_name: str) -> None:
    spec = pod_spec(file_name)
    cm = configmap()
    (config_volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == cm["metadata"]["name"]
    images = {c["image"] for c in tokend_containers(spec)}
    assert len(images) == 1
    for c in tokend_containers(spec):
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == config_volume["name"]]
        assert mount["readOnly"] is True
        args = c["args"]
        config_path = Path(args[args.index("--config") + 1])
        assert config_path.parent == Path(mount["mountPath"])
        assert config_path.name in cm["data"]


def test_native_sidecar_gates_the_app_on_readyz() -> None:
    spec = pod_spec(SIDECAR)
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"][:1] == ["run"]
    assert "--once" not in sidecar["args"]
    probe = sidecar["startupProbe"]["httpGet"]
    assert probe["path"] == "/readyz"
    listen_port = int(configmap_toml()["listen"].rpartition(":")[2])
    assert port_number(sidecar, probe["port"]) == listen_port
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert [c["name"] for c in spec["containers"]] == ["app"]


def test_init_variant_gets_tokens_first_then_keeps_them_fresh() -> None:
    spec = pod_spec(INIT_ONLY)
    (init,) = spec["initContainers"]
    assert "restartPolicy" not in init
    assert init["args"][:2] == ["run", "--once"]
    sidecar = by_name(spec["containers"], "entra-tokend")
    assert "--once" not in sidecar["args"]
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert init["image"] == sidecar["image"]


@pytest.mark.parametrize("file_name", [SIDECAR, INIT_ONLY])
def test_app_sends_a_configured_token_as_bearer(file_name: str) -> None:
    spec = pod_spec(file_name)
    app = by_name(spec["containers"], "app")
    script = "\n".join([*app.get("command", []), *app.get("args", [])])
    match = re.search(r'"Authorization: Bearer \$\(cat ([^)]+)\)"', script)
    assert match, script
    token_path = Path(match.group(1))
    (mount,) = app["volumeMounts"]
    assert token_path.parent == Path(mount["mountPath"])
    tokens = configmap_toml()["token"]
    files = {t.get("path", name): t for name, t in tokens.items()}
    assert token_path.name in files
    assert files[token_path.name].get("format", "raw") == "raw", "a header needs the bare token"
    assert app["command"] == ["/bin/sh", "-c"]


def test_app_script_sends_the_file_as_the_authorization_header(tmp_path: Path) -> None:
    """Run the example app's own script with sh and curl against a loopback server."""
    app = by_name(pod_spec(SIDECAR)["containers"], "app")
    (script,) = app["args"]
    (mount,) = app["volumeMounts"]
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for name, table in configmap_toml()["token"].items():
        (tokens / table.get("path", name)).write_text("eyJ0eXAi.example-token.sig")
    received: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as server:
        port = server.server_address[1]
        # The script as shipped, with three substitutions: where the volume is, where Azure is,
        # and one round of the loop instead of forever.
        local = script.replace(mount["mountPath"] + "/", f"{tokens}/")
        local = local.replace("https://management.azure.com/", f"http://127.0.0.1:{port}/")
        local = re.sub(r"sleep \d+", "exit 0", local)
        assert local.count(str(tokens)) == 1
        assert f"127.0.0.1:{port}" in local
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        result = subprocess.run(
            [tool("sh"), "-c", local, "sh"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={"PATH": str(Path(tool("curl")).parent)},
        )
        thread.join(30)
    assert result.returncode == 0, result.stderr
    assert received == ["Bearer eyJ0eXAi.example-token.sig"]
    assert "HTTP 200" in result.stdout


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In/NotIn/Exists) matches."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
        if operator == "NotIn" and labels.get(key) in expression["values"]:
            return False
        if operator == "Exists" and key not in labels:
            return False
        assert operator in ("In", "NotIn", "Exists"), operator
    return True


def pod_labels(file_name: str) -> dict[str, str]:
    labels: dict[str, str] = deployment(file_name)["spec"]["template"]["metadata"]["labels"]
    return labels


def test_podmonitor_scrapes_the_metrics_port_of_every_example() -> None:
    ((_, monitor),) = k8s_kind("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for name in (SIDECAR, INIT_ONLY, ENDPOINT):
        assert selects(selector, pod_labels(name)), name
        ports = [p["name"] for c in all_containers(pod_spec(name)) for p in c.get("ports", [])]
        assert endpoint["port"] in ports, name
    assert not selects(selector, {"app.kubernetes.io/name": "other"})


def test_networkpolicy_admits_only_prometheus_to_the_metrics_port() -> None:
    ((_, policy),) = k8s_kind("NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    listen_port = int(configmap_toml()["listen"].rpartition(":")[2])
    assert rule["ports"] == [{"port": listen_port, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"]
    assert peer["podSelector"]["matchLabels"]
    for name in (SIDECAR, INIT_ONLY, ENDPOINT):
        assert selects(spec["podSelector"], pod_labels(name)), name
        sidecar = by_name(all_containers(pod_spec(name)), "entra-tokend")
        assert port_number(sidecar, "metrics") == listen_port


def test_configmap_toml_passes_check_config(tmp_path: Path) -> None:
    doc = configmap_toml()
    assert unknown_keys(doc) == []
    config_file = tmp_path / "entra-tokend.toml"
    config_file.write_text(configmap()["data"]["entra-tokend.toml"])
    # Where azure-workload-identity v1.6 and later mount it: one directory deeper than before.
    token_file = tmp_path / "azure" / "wi" / "token" / "azure-identity-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text("header.payload.signature")
    # What the workload identity webhook injects.
    env = {
        "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
        "AZURE_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    }
    result = run_cli(
        "check-config",
        "--offline",
        "--config",
        str(config_file),
        "--output-dir",
        str(tmp_path),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert set(effective["token"]) == set(doc["token"])


def test_endpoint_variant_gives_the_app_only_the_endpoint() -> None:
    spec = pod_spec(ENDPOINT)
    meta = deployment(ENDPOINT)["spec"]["template"]["metadata"]
    app = by_name(spec["containers"], "app")
    sidecar = by_name(spec["initContainers"], "entra-tokend")
    assert meta["annotations"]["azure.workload.identity/skip-containers"] == "app"
    env = {e["name"]: e for e in app["env"]}
    assert set(env) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}  # no AZURE_*, no thumbprint
    assert not app.get("volumeMounts")  # no projected token, no token files
    toml = tomllib.loads(configmap(ENDPOINT)["data"]["entra-tokend.toml"])
    host, port = toml["endpoint"]["listen"].rsplit(":", 1)
    assert env["IDENTITY_ENDPOINT"]["value"] == f"http://{host}:{port}/msi/token"
    secret_env = toml["endpoint"]["secret_env"]
    (sidecar_secret,) = [e for e in sidecar["env"] if e["name"] == secret_env]
    assert sidecar_secret["valueFrom"] == env["IDENTITY_HEADER"]["valueFrom"]
    assert "secretKeyRef" in sidecar_secret["valueFrom"]


def test_endpoint_configmap_passes_check_config(tmp_path: Path) -> None:
    config = tmp_path / "entra-tokend.toml"
    config.write_text(
        configmap(ENDPOINT)["data"]["entra-tokend.toml"].replace("/tokens", str(tmp_path / "t"))
    )
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
        "IDENTITY_HEADER": "a-generated-secret",
    }
    result = run_cli("check-config", "--offline", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
