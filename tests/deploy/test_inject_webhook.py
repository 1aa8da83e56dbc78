"""`entra-tokend webhook` over real TLS: AdmissionReview bodies shaped as the API server sends them;
the JSON Patch it answers, applied with a JSON Patch library, gives exactly `inject`'s result."""

from __future__ import annotations

import base64
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from entra_tokend.inject import inject_template
from support import DaemonProcess, base_env
from support.inject import COMBINATIONS, IMAGE, MALFORMED, malformed_template, template
from support.webhook import Webhook, admission_review, api_server_pod, issue


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
