"""Fixtures of the observability tests: a live metrics server and promtool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from obs_helpers import LiveServer, live_server, promtool_path


@pytest.fixture
def live() -> Iterator[LiveServer]:
    """The real HTTP server on 127.0.0.1:0 with fresh Metrics, not ready yet."""
    with live_server() as server:
        yield server


@pytest.fixture
def promtool() -> str:
    """promtool's path (the tests fail, not skip, without it)."""
    return promtool_path()
