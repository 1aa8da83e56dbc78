"""Shared fixtures: the emulator as fake Entra, and the real daemon as a subprocess; and the CI
switch that fails a test skipped for a missing tool (``support.tools``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from support import DaemonProcess
from support.stages import pytest_collection_modifyitems
from support.tools import pytest_runtest_makereport

# Hooks: pytest finds them here.
__all__ = ["pytest_collection_modifyitems", "pytest_runtest_makereport"]
pytest_plugins = ["pytester"]  # tests/test_tool_switch.py runs pytest in process


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Any]:
    """A running emulator (plain http on loopback): the tests' Entra and kubelet."""
    from entra_tokend.emulator import Emulator

    emu = Emulator(tmp_path / "emulator")
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start real daemons; every one is stopped at the end of the test."""
    started: list[DaemonProcess] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(list(args), env or {}, tmp_path / f"daemon-{len(started)}.log")
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d._log.close()
