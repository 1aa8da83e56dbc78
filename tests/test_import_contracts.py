"""The import contracts (pyproject ``[tool.importlinter]``) forbid what ARCHITECTURE.md forbids:
each probe below, added to a scratch copy of the package, must break a contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testlib import REPO, base_env

LINT = Path(sys.executable).parent / "lint-imports"
PROBES = {
    "httpx in the runner": ("runner.py", "import httpx  # probe\n"),
    "EntraExchange in the runner": (
        "runner.py",
        "from entra_tokend.exchange import EntraExchange  # probe\n",
    ),
    "write_atomic in the runner": (
        "runner.py",
        "from entra_tokend.outputs.writer import write_atomic  # probe\n",
    ),
    "ClientPool in config": (
        "config/__init__.py",
        "from entra_tokend.exchange.transport import ClientPool  # probe\n",
    ),
    "prometheus_client in the scheduler": ("scheduler.py", "import prometheus_client  # probe\n"),
    "the daemon in util": ("util/files.py", "import entra_tokend.daemon  # probe\n"),
}


def _lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        env=base_env({"PYTHONPATH": str(package_root)}),
        cwd=REPO,  # pyproject.toml's contracts
        capture_output=True,
        text=True,
        check=False,
    )


def test_each_forbidden_import_breaks_a_contract(tmp_path: Path) -> None:
    """One scratch copy holds every probe (one lint run); the report must name each."""
    if not LINT.exists():
        pytest.skip("import-linter is not installed in this environment")
    scratch = tmp_path / "daemon"
    shutil.copytree(REPO / "daemon", scratch, ignore=shutil.ignore_patterns("__pycache__"))
    for relative, line in PROBES.values():
        target = scratch / "entra_tokend" / relative
        target.write_text(target.read_text() + line)
    result = _lint(scratch)
    assert result.returncode != 0, result.stdout[-2000:]
    report = result.stdout
    for probe, (relative, line) in PROBES.items():
        importer = "entra_tokend." + relative.removesuffix(".py").removesuffix("/__init__")
        importer = importer.replace("/", ".")
        imported = line.split()[1]
        assert f"{importer} -> {imported}" in report, (probe, report[-3000:])
