"""Fixtures of the observability tests: a live metrics server and promtool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import tool
from support.observability import LiveServer, live_server


@pytest.fixture
def live() -> Iterator[LiveServer]:
    """The real HTTP server on 127.0.0.1:0 with fresh Metrics, not ready yet."""
    with live_server() as server:
        yield server


@pytest.fixture
def promtool() -> str:
    """promtool's path, from $PROMTOOL or PATH (Debian package 'prometheus'; see .ci/run).

    The observability checks fail, not skip, without it.
    """
    return tool("promtool", env_var="PROMTOOL")
