"""The CI switch (``support.tools``): a test skipped because a tool is missing fails when
``ENTRA_TOKEND_REQUIRE_TOOLS=1``, and only such a skip (not one for another reason, nor for a
tool installed only on request); without the variable it stays a skip.

Each case runs pytest (in process, ``pytester``) on a small test file whose conftest installs
the same hook as tests/conftest.py.
"""

from __future__ import annotations

import pytest

from support.tools import REQUIRE_TOOLS

CASES = """
import pytest
from support.tools import require_tool

def test_helper():
    require_tool("no-such-tool-entra-tokend-test")

def test_plain_skip_naming_the_installer():
    pytest.skip("node is not installed (tests/tools.sh installs @azure/identity with npm)")

def test_skip_for_another_reason():
    pytest.skip("needs root")

def test_skip_for_an_opt_in_tool():
    pytest.skip("az is not installed at /x/az (ENTRA_TOKEND_INSTALL_AZ=1 tests/tools.sh)")
"""


@pytest.mark.parametrize("require", [None, "0", "1"])
def test_a_skip_for_a_missing_tool_fails_only_under_the_switch(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, require: str | None
) -> None:
    if require is None:
        monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_TOOLS, require)
    pytester.makeconftest("from support.tools import pytest_runtest_makereport  # noqa: F401\n")
    pytester.makepyfile(test_cases=CASES)
    # Without hypothesis's plugin: its terminal summary imports all of hypothesis (seconds).
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    if require == "1":
        result.assert_outcomes(failed=2, skipped=2)
        result.stdout.fnmatch_lines(["*FAILED*test_helper*", "*FAILED*test_plain_skip*"])
    else:
        result.assert_outcomes(skipped=4)
