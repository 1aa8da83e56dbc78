"""Injection of untrusted input: fields of the wrong type, oversized or deeply nested templates and
YAML alias bombs are refused with one line naming what is wrong (exit 2 for the CLI, never a
traceback); what is not injected is passed through as it was."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from entra_tokend.inject import InjectError, inject_template
from entra_tokend.injectcheck import MAX_DEPTH, MAX_VALUES
from support import base_env
from support.inject import (
    COMBINATIONS,
    IMAGE,
    MALFORMED_SHAPES,
    malformed_shape,
    template,
    valid_annotations,
)


def inject(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entra_tokend", "inject", "--image", IMAGE],
        input=text, capture_output=True, text=True, timeout=120, check=False, env=base_env(),
    )  # fmt: skip


def _one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("case", sorted(MALFORMED_SHAPES))
def test_a_field_of_the_wrong_type_is_named(case: str) -> None:
    pod, named = malformed_shape(case)
    with pytest.raises(InjectError) as raised:
        inject_template(pod, IMAGE)
    assert [p.partition(": ")[0] for p in raised.value.problems] == [named]
    line = _one_line_exit_2(inject(yaml.safe_dump({"kind": "Pod", **pod})))
    assert line.startswith(f"entra-tokend: inject: document 1 (Pod/(no name)): {named}: must be ")


def test_null_fields_count_as_absent() -> None:
    pod = template(valid_annotations())
    pod["spec"]["securityContext"] = None
    pod["spec"]["containers"][0]["env"] = None
    injected = inject_template(pod, IMAGE)
    assert injected["spec"]["securityContext"] == {"fsGroup": 65532}
    assert [c["name"] for c in injected["spec"]["initContainers"]] == ["entra-tokend"]


def test_templates_over_the_bounds_are_refused_aliases_counted_each_time() -> None:
    shared: list[Any] = [[] for _ in range(10)]
    deep: list[Any] = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    for value, what in (
        ([shared] * (MAX_VALUES // 10), f"over {MAX_VALUES} values"),  # 10 lists, many references
        (deep, f"over {MAX_DEPTH} levels"),
    ):
        pod = template(valid_annotations())
        pod["spec"]["x"] = value
        with pytest.raises(InjectError) as raised:
            inject_template(pod, IMAGE)
        assert raised.value.problems == [
            f"entra-tokend.io/inject: the pod is too large to inject ({what})"
        ]


def _alias_bomb(annotated: bool) -> str:
    """A Pod whose spec.x holds 9^8 (43 million) scalars through 8 levels of aliases."""
    lines = ["apiVersion: v1", "kind: Pod", "metadata:", "  name: bomb"]
    if annotated:
        lines += [
            "  labels: {azure.workload.identity/use: 'true'}",
            "  annotations: {entra-tokend.io/inject: 'true', "
            "entra-tokend.io/token.a: 'https://x/.default'}",
        ]
    lines += [
        "spec:",
        "  containers: [{name: app, image: x}]",
        "  x:",
        "    a0: &a0 [x" + ", x" * 8 + "]",
    ]
    for i in range(1, 9):
        lines.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_to_inject_is_refused_naming_the_document() -> None:
    line = _one_line_exit_2(inject(yaml.safe_dump(template()) + "---\n" + _alias_bomb(True)))
    assert line.startswith("entra-tokend: inject: document 2 (Pod/bomb): uses YAML aliases")


def test_aliases_in_a_document_not_injected_are_passed_through_byte_for_byte() -> None:
    text = _alias_bomb(False) + "---\nkind: ConfigMap\ndata: {a: &x v, b: *x}\n"
    result = inject(text)
    assert (result.returncode, result.stdout) == (0, text), result.stderr


def test_yaml_nested_too_deeply_to_read_exits_2() -> None:
    line = _one_line_exit_2(inject("kind: Pod\nx: " + "[" * 100_000 + "]" * 100_000 + "\n"))
    assert line == "entra-tokend: inject: document 1: nested too deeply to read"


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "List", "items": {"kind": "Pod"}},
        {"kind": "CronJob", "spec": {"jobTemplate": ["x"]}},
        {"kind": "Deployment", "metadata": ["x"], "spec": {"template": "x"}},
        {"kind": "Pod", "metadata": {"annotations": ["entra-tokend.io/inject"]}},
        {"kind": "Pod", "metadata": ["x"]},
    ],
)
def test_manifests_of_odd_shapes_hold_no_template_and_pass_through(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc)
    result = inject(text)
    assert (result.returncode, result.stdout, result.stderr) == (0, text, "")


def test_an_env_name_of_another_type_is_no_clash_and_no_crash() -> None:
    pod = template(COMBINATIONS["endpoint"])
    pod["spec"]["containers"][0]["env"] = [{"name": ["IDENTITY_HEADER"]}, {"name": {}}]
    injected = inject_template(pod, IMAGE)
    names = [e["name"] for e in injected["spec"]["containers"][0]["env"]]
    assert names[2:] == ["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]
