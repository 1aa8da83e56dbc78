"""The tests' own structure: a test module takes fakes and helpers from the support package
(tests/support), never from another test module or a conftest."""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO

TESTS = REPO / "tests"


def _imported_modules(path: Path) -> list[str]:
    """Every module name an ``import``/``from ... import`` in ``path`` names (any depth)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _test_module_imports(root: Path) -> list[str]:
    """``file: module`` for each import under ``root`` of a test module or a conftest."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for name in _imported_modules(path):
            leaf = name.rpartition(".")[2]
            if leaf.startswith("test_") or leaf == "conftest" or name.startswith("tests."):
                found.append(f"{path.relative_to(root)}: {name}")
    return found


def test_no_test_module_imports_another() -> None:
    assert _test_module_imports(TESTS) == []


def test_the_check_sees_an_import_of_a_test_module(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("from test_b import FakeClock\n")
    (tmp_path / "test_c.py").write_text("def f() -> None:\n    import conftest\n")
    assert _test_module_imports(tmp_path) == ["test_a.py: test_b", "test_c.py: conftest"]
