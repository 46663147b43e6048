"""No import cycles inside ``skyport/``: read from the source with ``ast``, nothing imported.

Every ``import`` / ``from ... import`` of a ``skyport`` module is an edge, wherever
it is written: at module level, inside a function (a lazy import is still a
dependency, only a hidden one) and under ``if TYPE_CHECKING:`` (a cycle kept
out of the runtime by TYPE_CHECKING is still a cycle in the design).
``from skyport.x import name`` is an edge to ``skyport.x.name`` when that is a
module, else to ``skyport.x``.  A package's ``__init__`` is a module like the
others: importing ``skyport.x.y`` runs ``skyport/x/__init__.py`` first, but
that is not counted as an edge (else every re-exporting ``__init__`` would be a
cycle with its own submodules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2] / "skyport"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module
    base = importer.split(".")
    if not is_package:
        base = base[:-1]  # a module's own package is one up; a package's is itself
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def import_graph() -> dict[str, set[str]]:
    """Each skyport module -> the skyport modules it imports (its own package excepted)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, name, is_package)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                # ``import skyport.a.b`` names a module; walk up to the nearest one we have
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # an __init__ is imported by its submodules' import anyway: not an edge
                if target and target != name and not name.startswith(f"{target}."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None; iterative DFS, deterministic order."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for root in sorted(graph):
        if colour[root] != WHITE:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        colour[root] = GREY
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = BLACK
                stack.pop()
                continue
            nxt = todo.pop(0)
            if colour[nxt] == GREY:
                path = [n for n, _ in stack]
                return [*path[path.index(nxt):], nxt]
            if colour[nxt] == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, sorted(graph[nxt])))
    return None


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "skyport.models" in graph and "skyport.store" in graph
    assert "skyport.models" in graph["skyport.store"]  # store.py: from skyport.models import


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


@pytest.mark.parametrize(
    ("level", "module", "importer", "is_package", "expected"),
    [
        (0, "skyport.models", "skyport.store", False, "skyport.models"),
        (1, "views", "skyport.core.service", False, "skyport.core.views"),
        (1, "", "skyport.core.service", False, "skyport.core"),
        (2, "models", "skyport.core.service", False, "skyport.models"),
        (1, "service", "skyport.core", True, "skyport.core.service"),
    ],
)
def test_relative_imports_resolve(level: int, module: str, importer: str, is_package: bool,
                                  expected: str) -> None:
    assert _resolve(module, level, importer, is_package) == expected


def test_no_import_cycles_in_skyport() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
