"""The module structure: every module imports alone (no hidden cycle), layers point one way."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from support import REPO, base_env, require_tool

PACKAGE = REPO / "daemon" / "entra_tokend"


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _import_alone(name: str) -> str | None:
    """Why ``name`` fails to import in an interpreter of its own, or None."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        env=base_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return None
    return f"{name}: {result.stderr.strip().splitlines()[-1]}"


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """A cycle shows as an ImportError only when its *second* module is imported first, so
    each module gets an interpreter of its own (as many at once as there are CPUs)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failures = [f for f in pool.map(_import_alone, _modules()) if f]
    assert not failures, "\n".join(failures)


def test_import_layers_contract_holds() -> None:
    """import-linter's contracts in pyproject.toml (also a CI gate of its own)."""
    lint = require_tool("lint-imports", installer="pip install '.[test]'")
    result = subprocess.run(
        [lint, "--no-cache"],
        env=base_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout
