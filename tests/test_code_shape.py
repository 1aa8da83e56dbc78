"""The code's shape (issue 22's "done when"): small files and functions, a lifecycle-only
``daemon.py``, and no import cycle — function-level and ``TYPE_CHECKING`` imports included."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grimp

from support import REPO

MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
MAX_DAEMON_LINES = 300
MAX_DAEMON_METHODS = 12
SOURCES = ("daemon", "tests", "bench")


def _python_files() -> Iterator[Path]:
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            if not any(part.startswith(".") or part == "node_modules" for part in path.parts):
                yield path


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_source_file_is_over_450_lines() -> None:
    long = [f"{p.relative_to(REPO)}: {n}" for p in _python_files() if (n := _lines(p)) > 450]
    assert not long, "\n".join(long)


def test_no_function_is_over_80_lines() -> None:
    long = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {size}")
    assert not long, "\n".join(long)


def test_daemon_module_is_lifecycle_sized() -> None:
    path = REPO / "daemon" / "entra_tokend" / "daemon.py"
    assert _lines(path) <= MAX_DAEMON_LINES
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            methods = [
                n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            ]
            assert len(methods) <= MAX_DAEMON_METHODS, (node.name, len(methods))


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle_counting_lazy_and_type_checking_imports() -> None:
    """grimp reads every import statement, inside functions and ``if TYPE_CHECKING`` too."""
    graph = grimp.build_graph("entra_tokend", cache_dir=None)
    cycles = _cycles(graph)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a graph with a two-module cycle is reported."""
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]
