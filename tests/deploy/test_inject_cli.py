"""`entra-tokend inject`: the real CLI on YAML streams; its output against the Kubernetes schemas
of 1.29-1.35 (kubernetes-validate --strict), and the injected sidecar's flags against the daemon."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from entra_tokend.inject import CONFIG_DIR, ENDPOINT_CONFIG
from support import base_env, offline_env, output_files, run_cli
from support.inject import (
    COMBINATIONS,
    IMAGE,
    KINDS,
    MALFORMED,
    P,
    malformed_template,
    pod_template_of,
    template,
    workload,
)

VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35")

UNTOUCHED = """\
# A Service, written the way people write them (flow maps, comments, odd spacing, quotes).
apiVersion: v1
kind: Service
metadata: {name: example,   labels: {app: "example"}}  # kept as is
spec:
  ports: [ {port: 80, targetPort: 8080} ]
  selector:
    app: 'example'
"""


def inject(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entra_tokend", "inject", "--image", IMAGE, *args],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=base_env(),
    )


def stream(docs: list[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)


def test_other_documents_are_written_back_byte_for_byte(tmp_path: Path) -> None:
    plain = yaml.safe_dump(workload("Deployment", template()), sort_keys=False)
    annotated = yaml.safe_dump(workload("Deployment", template(COMBINATIONS["tokens"])))
    source = f"{UNTOUCHED}---\n# plain\n{plain}---\n# annotated\n{annotated}...\n---\n# empty\n"
    (tmp_path / "in.yaml").write_text(source)
    result = inject("", "-f", str(tmp_path / "in.yaml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"{UNTOUCHED}---\n# plain\n{plain}---\n# annotated\n")
    assert out.endswith("...\n---\n# empty\n")
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    assert [d["kind"] for d in docs] == ["Service", "Deployment", "Deployment"]
    assert [c["name"] for c in pod_template_of(docs[2])["spec"]["initContainers"]] == [
        "entra-tokend"
    ]
    # Line endings survive too.
    crlf = UNTOUCHED.replace("\n", "\r\n").encode()
    command = [sys.executable, "-m", "entra_tokend", "inject"]
    same = subprocess.run(command, input=crlf, capture_output=True, env=base_env(), check=True)
    assert same.stdout == crlf


def test_inject_on_its_own_output_changes_nothing() -> None:
    docs = [workload(kind, template(COMBINATIONS["endpoint"])) for kind in KINDS]
    first = inject(stream(docs))
    assert first.returncode == 0, first.stderr
    second = inject(first.stdout)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_a_list_and_every_workload_kind_are_injected() -> None:
    items = [workload(kind, template(COMBINATIONS["tokens"])) for kind in KINDS]
    result = inject(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    assert result.returncode == 0, result.stderr
    out = yaml.safe_load(result.stdout)
    for item in out["items"]:
        names = [c["name"] for c in pod_template_of(item)["spec"]["initContainers"]]
        assert names == ["entra-tokend"], item["kind"]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_annotation_exits_2_naming_it(case: str) -> None:
    source, named = malformed_template(case)
    docs = [workload("Pod", template()), workload("Deployment", source, name="broken")]
    result = inject(stream(docs))
    assert result.returncode == 2
    assert result.stdout == ""  # nothing half-written for kubectl apply
    lines = result.stderr.splitlines()
    assert lines, result.stderr
    for line in lines:
        assert line.startswith("entra-tokend: inject: document 2 (Deployment/broken): "), line
    assert any(f"(Deployment/broken): {named}: " in line for line in lines), lines


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    result = inject("", "-f", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "missing.yaml: cannot be read" in result.stderr
    result = inject("a: [\n")
    assert result.returncode == 2
    assert "document 1: not YAML" in result.stderr


def test_output_passes_the_kubernetes_schemas_for_every_kind_and_combination(
    tmp_path: Path,
) -> None:
    docs = [
        workload(
            kind, template(annotations, containers=("app", "other")), name=f"{kind}-{combo}".lower()
        )
        for kind in KINDS
        for combo, annotations in COMBINATIONS.items()
    ]
    result = inject(stream(docs))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "injected.yaml"
    out.write_text(result.stdout)
    injected = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(injected) == len(docs)
    assert all("initContainers" in pod_template_of(d)["spec"] for d in injected)
    for version in VERSIONS:
        check = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.count("passed") == len(docs), check.stdout


def sidecar_of(annotations: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    result = inject(stream([workload("Pod", template(annotations))]))
    assert result.returncode == 0, result.stderr
    pod = yaml.safe_load(result.stdout)
    (sidecar,) = pod["spec"]["initContainers"]
    return pod, sidecar


def local_args(pod: dict[str, Any], sidecar: dict[str, Any], root: Path) -> list[str]:
    """The sidecar's args with its volumes at paths under ``root``, as kubelet would mount them:
    the generated endpoint TOML (downward API) or a ConfigMap's TOML in the config directory."""
    config_dir = root / "config"
    config_dir.mkdir()
    annotations = pod["metadata"]["annotations"]
    if P + "config" in annotations:
        toml = '[token.vault]\nscope = "https://vault.azure.net/.default"\n'
        if annotations.get(P + "endpoint") == "true":  # as the README tells such a ConfigMap
            toml += '[endpoint]\nlisten = "127.0.0.1:8081"\nsecret_env = "IDENTITY_HEADER"\n'
            toml += 'allow = ["https://vault.azure.net"]\n'
        (config_dir / "entra-tokend.toml").write_text(toml)
    elif ENDPOINT_CONFIG in annotations:
        (config_dir / "entra-tokend.toml").write_text(annotations[ENDPOINT_CONFIG])
    mount = sidecar["volumeMounts"][0]["mountPath"]
    args = [a.replace(CONFIG_DIR, str(config_dir)) for a in sidecar["args"]]
    return [str(root / "out") if a == mount else a for a in args]


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_the_daemon_accepts_the_injected_flags_and_generated_config(
    combination: str, tmp_path: Path
) -> None:
    pod, sidecar = sidecar_of(COMBINATIONS[combination])
    args = local_args(pod, sidecar, tmp_path)
    assert args[0] == "run"
    flags = [a for a in args[1:] if a != "--once"]
    flags[flags.index("--listen") + 1] = "127.0.0.1:0"  # the port may be taken on this host
    env = offline_env(tmp_path)
    if "env" in sidecar:  # the endpoint's header: the pod's UID, or a Secret's value
        env["IDENTITY_HEADER"] = str(uuid.uuid4())
    del env["ENTRA_TOKEND_OUTPUT_DIR"], env["ENTRA_TOKEND_LISTEN"]  # the flags say
    result = run_cli("check-config", "--offline", *flags, env=env)
    assert result.returncode == 0, result.stderr


def test_the_init_container_gets_every_token_from_the_emulator(
    emulator: Any, tmp_path: Path
) -> None:
    pod, init = sidecar_of(COMBINATIONS["init"])
    args = local_args(pod, init, tmp_path)
    assert args[:2] == ["run", "--once"]
    env = {k: v for k, v in emulator.env().items() if k.startswith("AZURE_")}
    result = run_cli(*args, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert output_files(tmp_path / "out") == ["arm"]


def test_annotations_on_the_workload_instead_of_its_template_are_refused() -> None:
    doc = workload("Deployment", template())
    doc["metadata"]["annotations"] = {P + "inject": "true"}
    result = inject(stream([doc]))
    assert result.returncode == 2
    assert f"(Deployment/example): {P}inject: on the Deployment itself" in result.stderr
