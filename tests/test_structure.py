"""The shape of the code: the code location loads without the heavy compute libraries, the project's
modules import one another without cycles, and the library imports no Dagster and no application code.

Imports are read statically (ast) from every module under nx_dagster/, assets/ and nxd/. `from a import b`
is an import of the module a.b where that module exists, else of a. Import order
depends on module-level imports only (imports inside functions and under `if TYPE_CHECKING:` do not run
at import), so those must form no cycle; imports anywhere must not either (a deferred import that dodges
a cycle still ties two modules together). The library's boundary counts every import, wherever it is.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nx_dagster", "assets", "nxd")
HEAVY = ("torch", "numba", "triton")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str]]:
    """(imported name, where) for each import in `module`: a project module where it is one, else the
    top-level name (`torch`, `dagster`); where: "module" (runs at import), "function" or "typing" (under
    `if TYPE_CHECKING:`, never runs)."""
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, str]] = []

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    def visit(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((resolve(alias.name) or alias.name.split(".")[0], where))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            for alias in node.names:
                target = resolve(f"{name}.{alias.name}") if f"{name}.{alias.name}" in modules else resolve(name)
                found.append((target or name.split(".")[0], where))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "typing")
            for child in node.orelse:
                visit(child, where)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and where == "module":
            where = "function"
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(ast.parse(path.read_text(), str(path)), "module")
    return found


def import_graph(module_level: bool) -> dict[str, set[str]]:
    """Project module -> the project modules it imports when it runs: at module level only, or also
    inside functions (type-checking imports never run)."""
    modules = _modules()
    counted = ("module",) if module_level else ("module", "function")
    return {m: {t for t, where in _imports(m, p, modules) if t in modules and t != m and where in counted}
            for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out)


def test_code_location_loads_without_torch_numba_triton():
    code = ("import sys, json, assets.definitions as d; d.defs(); "
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_no_import_cycle():
    assert cycles(import_graph(module_level=True)) == []


def test_no_cycle_through_deferred_imports():
    """An import moved into a function to dodge a cycle still ties the two modules together: none."""
    assert cycles(import_graph(module_level=False)) == []


def test_library_imports_neither_dagster_nor_the_application():
    modules = _modules()
    bad = sorted((m, t) for m, p in modules.items() if m.split(".")[0] == "nx_dagster"
                 for t, _ in _imports(m, p, modules) if t.split(".")[0] in ("dagster", "assets", "nxd"))
    assert bad == []


if __name__ == "__main__":  # print the cycles: module-level imports, then with those inside functions
    for level in (True, False):
        print("module-level" if level else "module-level and in functions", json.dumps(cycles(import_graph(level)), indent=1))
