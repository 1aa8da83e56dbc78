"""External tools the tests run, and the CI switch that turns a missing tool into a failure.

``tool(name)`` is for a tool every run must have (hadolint, promtool...): missing, the test
fails. ``require_tool(name)`` is for one a developer's machine may lack (skopeo, node...):
missing, the test is skipped with a reason naming the script that installs it — unless
``ENTRA_TOKEND_REQUIRE_TOOLS=1`` (set by ``.ci/run`` for its pytest run), when the test fails
instead, so that CI cannot pass by skipping what ``tests/tools.sh`` failed to install. The
conftest applies the same switch to any other skip whose reason names ``tools.sh``
(``tool_skip_reason`` recognises them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_TOOLS = "ENTRA_TOKEND_REQUIRE_TOOLS"
INSTALLER = "tests/tools.sh"
_INSTALLER_MARK = "tools.sh"  # in the reason of every skip for a tool an installer provides
_OPT_IN_MARK = "ENTRA_TOKEND_INSTALL_"  # ...unless it installs that tool only on request


def requiring_tools() -> bool:
    """True when a skip for a missing tool must fail the run (``$ENTRA_TOKEND_REQUIRE_TOOLS``
    is set to anything but "", "0")."""
    return os.environ.get(REQUIRE_TOOLS, "") not in ("", "0")


def tool_skip_reason(reason: str) -> bool:
    """True when a skip's reason says a tool that an install script provides is missing.

    A tool tools.sh installs only on request (``ENTRA_TOKEND_INSTALL_AZ=1 tests/tools.sh``) is
    not one: its tests have a CI stage of their own, which fails them itself.
    """
    return _INSTALLER_MARK in reason and _OPT_IN_MARK not in reason


def find_tool(name: str, *, env_var: str | None = None) -> str | None:
    """Path of an executable: ``$env_var``, the venv's copy, then PATH; None when none is."""
    override = os.environ.get(env_var) if env_var else None
    candidates = [Path(override)] if override else []
    candidates.append(Path(sys.executable).parent / name)
    candidates += [Path(d) / name for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def tool(name: str, *, env_var: str | None = None) -> str:
    """Path of a required external tool: ``$env_var``, the venv's copy, then PATH.

    Raises AssertionError when it is missing: a check that needs the tool fails, never skips.
    """
    path = find_tool(name, env_var=env_var)
    if path is None:
        hint = f" or set {env_var} to its path" if env_var else ""
        raise AssertionError(f"{name} is not installed: .ci/run installs it{hint}")
    return path


def missing_tool(what: str, installer: str = INSTALLER) -> NoReturn:
    """Skip the calling test because ``what`` is missing (fail under ``REQUIRE_TOOLS``).

    ``installer`` names what installs it; the skip's reason names it too, which is how the
    conftest recognises a tool skip.
    """
    reason = f"{what} is not installed (run {installer})"
    if requiring_tools():
        pytest.fail(f"{reason}; {REQUIRE_TOOLS} is set, so a missing tool fails", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, *, installer: str = INSTALLER, env_var: str | None = None) -> str:
    """Path of an optional tool; skips the test without it (fails under ``REQUIRE_TOOLS``)."""
    path = find_tool(name, env_var=env_var)
    if path is None:
        missing_tool(name, installer)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The CI switch as a hook (the conftest imports it): under ``REQUIRE_TOOLS``, a test
    skipped because an install script's tool is missing is reported as failed."""
    report = yield
    if not (report.skipped and requiring_tools()) or hasattr(report, "wasxfail"):
        return report
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if tool_skip_reason(reason):
        report.outcome = "failed"
        report.longrepr = f"{reason}\n{REQUIRE_TOOLS} is set, so a test skipped for a tool fails"
    return report
