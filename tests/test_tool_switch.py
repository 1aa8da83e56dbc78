"""The CI switch (``support.tools``): a test skipped because a tool is missing fails when
``ENTRA_TOKEND_REQUIRE_TOOLS=1``, and only such a skip; without the variable it stays a skip.

Each case runs pytest in a subprocess on a small test file whose conftest installs the same
hook as tests/conftest.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, base_env
from support.tools import REQUIRE_TOOLS

CASES = """
import pytest
from support.tools import missing_tool, require_tool

def test_helper():
    require_tool("no-such-tool-entra-tokend-test")

def test_plain_skip_naming_the_installer():
    pytest.skip("node is not installed (tests/tools.sh installs @azure/identity with npm)")

def test_skip_for_another_reason():
    pytest.skip("needs root")
"""


def _outcomes(tmp_path: Path, require: str | None) -> dict[str, str]:
    """{test name: PASSED/FAILED/SKIPPED} of the cases, run with the variable set to
    ``require`` (None: unset)."""
    (tmp_path / "conftest.py").write_text(
        "from support.tools import pytest_runtest_makereport  # noqa: F401\n"
    )
    (tmp_path / "test_cases.py").write_text(CASES)
    env = base_env({"PYTHONPATH": f"{REPO / 'daemon'}:{REPO / 'tests'}"})
    if require is not None:
        env[REQUIRE_TOOLS] = require
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_cases.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.findall(r"^test_cases\.py::(\w+) (PASSED|FAILED|SKIPPED)", result.stdout, re.M)
    assert found, result.stdout + result.stderr
    return dict(found)


@pytest.mark.parametrize("require", [None, "0", "1"])
def test_a_skip_for_a_missing_tool_fails_only_under_the_switch(
    tmp_path: Path, require: str | None
) -> None:
    outcomes = _outcomes(tmp_path, require)
    tool_outcome = "FAILED" if require == "1" else "SKIPPED"
    assert outcomes.get("test_helper") == tool_outcome, outcomes
    assert outcomes.get("test_plain_skip_naming_the_installer") == tool_outcome, outcomes
    assert outcomes.get("test_skip_for_another_reason") == "SKIPPED", outcomes
