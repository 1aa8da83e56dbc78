"""Which tests run in a CI stage of their own (pyproject markers; `.ci/run` runs each stage).

The README's test command is the main suite; these groups drive slow real systems and are
deselected from it (``addopts``), each run by ``.ci/run`` with ``-m STAGE``:

- ``kubernetes``: the injector and webhook (kubernetes-validate for every kind, annotation
  combination and Kubernetes version; the webhook over real TLS), the manifests and the image's
  Dockerfile checks — everything under ``tests/deploy`` but the ``packaging`` stage's.
- ``clients``: the README recipes with their real clients (PostgreSQL, Redis, nginx, skopeo,
  buildah, podman, kubectl, Kafka, Prometheus) and the real SDKs against the endpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
STAGES: dict[str, tuple[str, ...]] = {
    "kubernetes": ("deploy/",),
    "clients": (
        "recipes/",
        "endpoint/test_endpoint_sdks.py",
        "endpoint/test_endpoint_imds_clients.py",
        "emulator/test_acr_daemon_real.py",
        "emulator/test_credhelper_real.py",
        "emulator/test_emu_registry_real.py",
        "emulator/test_emu_node_sdk.py",
        "observability/test_obs_prometheus_live.py",
    ),
}


def stage_of(path: Path) -> str | None:
    """The stage a test file belongs to, or None (the main suite)."""
    try:
        relative = path.resolve().relative_to(TESTS).as_posix()
    except ValueError:
        return None
    for stage, prefixes in STAGES.items():
        if any(relative.startswith(prefix) for prefix in prefixes):
            return stage
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each collected test with its stage (a pytest hook, re-exported by conftest)."""
    for item in items:
        stage = stage_of(Path(str(item.path)))
        if stage is not None:
            item.add_marker(getattr(pytest.mark, stage))
