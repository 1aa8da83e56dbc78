"""Fixtures of the README recipe tests: one TLS emulator per module (every recipe's Entra and
kubelet), a recording upstream, and the real-registry fixtures of the emulator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recipes.recipe_helpers import (
    Emulator,
    Upstream,
    registry_factory_fixture,
    registry_tools_fixture,
    shared_dir,
    skopeo_fixture,
)

__all__ = ["registry_factory_fixture", "registry_tools_fixture", "shared_dir", "skopeo_fixture"]


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """A running emulator over HTTPS with its own CA (its env carries SSL_CERT_FILE)."""
    with Emulator(tmp_path_factory.mktemp("emulator") / "state", tls=True) as emulator:
        yield emulator


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A recording HTTP upstream on loopback."""
    server = Upstream()
    try:
        yield server
    finally:
        server.close()
