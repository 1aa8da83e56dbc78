"""The shipped PodMonitor scrapes the endpoint example's pods too (issue 23 §6)."""

from __future__ import annotations

from typing import Any

import yaml

from testlib import REPO

KUBERNETES = REPO / "config" / "kubernetes"


def _doc(name: str, kind: str) -> dict[str, Any]:
    docs = yaml.safe_load_all((KUBERNETES / name).read_text())
    (found,) = [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    return found


def test_podmonitor_selects_the_endpoint_examples_metrics_port() -> None:
    monitor = _doc("podmonitor.yaml", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    template = _doc("deployment-endpoint.yaml", "Deployment")["spec"]["template"]
    assert selector.items() <= template["metadata"]["labels"].items()
    spec = template["spec"]
    containers = spec.get("initContainers", []) + spec["containers"]
    assert endpoint["port"] in [p["name"] for c in containers for p in c.get("ports", [])]
