"""The project's import graph, read statically (every ``import`` statement, module-level and inside
functions alike): no import cycle between the project's modules, and ``tensorf_common`` reaches
neither pandas nor matplotlib (report building lives in ``tensorf_bench.report``).

A function-level import still ties two modules together (it only postpones the import), so it
counts; imports under ``if TYPE_CHECKING:`` never run and do not.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

REPORT_ONLY = ("pandas", "matplotlib")
"""Libraries that only report building (``tensorf_bench``) may import."""


def project_packages() -> list[str]:
    """The installed packages (``[tool.setuptools.packages.find] include``, one source)."""
    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return [p.rstrip("*") for p in find["include"]]


@dataclass
class Module:
    name: str
    is_package: bool
    imports: dict[str, int] = field(default_factory=dict)
    """Project module -> the first line importing it."""
    external: dict[str, int] = field(default_factory=dict)
    """Top-level name of another library -> the first line importing it."""


def _runtime_imports(tree: ast.AST):
    """Import statements that run: everything except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = REPO_ROOT, packages=None) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    sources: dict[str, Path] = {}
    for pkg in packages or project_packages():
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules[name] = Module(name, is_package)
            sources[name] = path

    def project_module(dotted: str):
        """The longest prefix of ``dotted`` that is a project module, or None."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    for name, mod in modules.items():
        tree = ast.parse(sources[name].read_text(encoding="utf-8"), filename=str(sources[name]))
        for node in _runtime_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.level == 0:
                base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                package = name.split(".") if mod.is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                hit = project_module(t)
                if hit is not None:
                    if hit != name:
                        mod.imports.setdefault(hit, node.lineno)
                else:
                    mod.external.setdefault(t.split(".")[0], node.lineno)
    return modules


def strongly_connected(modules: dict[str, Module]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each one holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in modules[v].imports:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def cycle_path(modules: dict[str, Module], component: list[str]) -> str:
    """One cycle inside a component, as ``a (line 3) -> b (line 9) -> a``."""
    inside = set(component)
    start = component[0]
    # breadth-first from start back to start, within the component
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in modules[v].imports:
                if w not in inside:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    path.reverse()
                    hops = [f"{a} (line {modules[a].imports[b]})" for a, b in zip(path, path[1:] + [start])]
                    return " -> ".join(hops + [start])
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return " <-> ".join(component)  # pragma: no cover - a component always holds a cycle


@pytest.fixture(scope="module")
def graph() -> dict[str, Module]:
    return import_graph()


def test_the_graph_sees_module_and_function_level_imports(graph):
    """The reader itself: relative and absolute imports, from-imports of submodules, and imports
    inside functions are edges (a graph without them would pass the cycle test on anything)."""
    assert "tensorf_common.data.blender" in graph["tensorf_common.data"].imports  # from .blender import ...
    assert "tensorf_common.geometry" in graph["tensorf_common.data.blender"].imports  # from ..geometry import ...
    assert "tensorf_common.scene" in graph["tensorf_common.data.scene_cache"].imports  # inside a function
    assert "tensorf_bench.report_runner.quality" in graph["tensorf_bench.report_runner.__main__"].imports
    assert "numpy" in graph["tensorf_common.geometry"].external


def test_a_cycle_is_found_and_named(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    g = import_graph(tmp_path, ["pkg"])
    comps = strongly_connected(g)
    assert comps == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycle_path(g, comps[0]) == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.c (line 1) -> pkg.a"


def test_no_import_cycle(graph):
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles: " + "; ".join(cycle_path(graph, c) for c in cycles)


def test_tensorf_common_reaches_neither_pandas_nor_matplotlib(graph):
    """Not directly, not through another project module, not inside a function."""
    start = [m for m in graph if m == "tensorf_common" or m.startswith("tensorf_common.")]
    seen = {m: [m] for m in start}
    todo = list(start)
    while todo:
        v = todo.pop()
        for w in graph[v].imports:
            if w not in seen:
                seen[w] = seen[v] + [w]
                todo.append(w)
    found = [
        f"{' -> '.join(path)} imports {lib} (line {graph[m].external[lib]})"
        for m, path in sorted(seen.items())
        for lib in REPORT_ONLY
        if lib in graph[m].external
    ]
    assert not found, "; ".join(found)
