"""The packages of lemevit form layers: no package imports, even inside a function, a package that imports it
back. A cycle means a concern lives on two floors (the reader cannot tell which package comes first, and an
import of one half loads the other)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import lemevit

SOURCE = Path(lemevit.__file__).parent


def _package(module: str) -> str:
    """The first component below ``lemevit`` of a dotted module name (a top-level module is its own package)."""
    return module.split(".")[1] if module.count(".") else module


def package_imports() -> dict[str, dict[str, set[str]]]:
    """For each package, the other packages it imports and from which of its files."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE)
        own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = ([f"{node.module}.{alias.name}" for alias in node.names] if node.module == "lemevit"
                           else [node.module])
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("lemevit.") and _package(target) != own:
                    graph[own][_package(target)].add(str(relative))
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle of the graph as the packages along it (first repeated last), or None."""
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        trail.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        trail.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_package_imports_one_that_imports_it_back():
    graph = package_imports()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("packages import each other: " + "; ".join(steps))


def test_the_cycle_finder_finds_a_cycle_and_names_its_files():
    graph = {"io": {"data": {"io/paths.py"}}, "data": {"io": {"data/oscd.py"}}, "tasks": {"data": {"x.py"}}}
    assert find_cycle(graph) == ["data", "io", "data"]
    assert find_cycle({"tasks": {"data": {"x.py"}}, "data": {"io": {"y.py"}}}) is None


def test_the_lowest_packages_import_no_other_package_but_errors():
    graph = package_imports()
    for low in ("errors", "io", "labels", "timing"):
        assert set(graph.get(low, {})) <= {"errors"}, (low, dict(graph.get(low, {})))
