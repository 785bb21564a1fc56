"""The package's structure, read from the source (no cluster): no import circles in the
core, the autoscaler and Serve; nothing outside the core uses a private name of it; no
module over 600 lines.

Imports are read with ``ast`` from every module of ``raylite/``, those inside functions
too (a lazy import is still a dependency; only ``if TYPE_CHECKING:`` blocks are skipped).
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``. Edges to the top-level ``raylite`` package are the public API, which every
library may use, and are left out (its names are imported on first use, PEP 562).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raylite"
NO_CYCLES_IN = ("raylite",)  # the whole package: core, autoscaler, serve, train, data, llm, ...
MAX_LINES = 600
# modules allowed over MAX_LINES, each with the reason it is not split yet (none now)
TOO_LONG_OK: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST):
    """Every node below ``node``, but not the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for c in child.orelse:
                yield c
                yield from _walk(c)
            continue
        yield child
        yield from _walk(child)


def _known(name: str) -> str | None:
    """The module ``name`` is, or the package it is in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, tree: ast.AST | None = None) -> list[tuple[ast.stmt, str, list[str]]]:
    """(statement, imported module, names taken from it) for each raylite import."""
    path = MODULES.get(module)
    if tree is None:
        tree = ast.parse(path.read_text(), str(path))
    is_pkg = path is not None and path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = []
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            out += [(node, a.name, []) for a in node.names if a.name.startswith("raylite")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.startswith("raylite"):
                out.append((node, source, [a.name for a in node.names]))
    return out


def _edges(module: str) -> set[str]:
    targets = set()
    for _node, source, names in _imports(module):
        subs = [f"{source}.{n}" for n in names if f"{source}.{n}" in MODULES]
        targets.update(subs)
        if len(subs) < len(names) or not names:
            targets.add(_known(source))
    targets.discard(None)
    targets.discard("raylite")  # the public API
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    return {m: _edges(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _path_in(comp: list[str], graph) -> str:
    """One circle through ``comp``, as text."""
    start, seen, path = comp[0], {comp[0]}, [comp[0]]
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in comp)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return " -> ".join(path + [start])
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return " <-> ".join(comp)
        seen.add(fresh[0])
        path.append(fresh[0])


# ----------------------------------------------------------------------------- tests
def test_the_graph_sees_lazy_imports_and_submodules():
    graph = import_graph()
    # a top-level ``from raylite.core import protocol as P``: an edge to the submodule
    assert "raylite.core.protocol" in graph["raylite.core.head"]
    # an import inside a function counts (serve.api starts the controller lazily)
    assert "raylite.serve._private.controller" in graph["raylite.serve.api"]
    # the public package is not an edge
    assert all("raylite" not in targets for targets in graph.values())
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_anywhere_in_the_package():
    graph = import_graph()
    bad = [c for c in cycles(graph) if any(_in(m, NO_CYCLES_IN) for m in c)]
    assert not bad, "import circles:\n" + "\n".join(_path_in(c, graph) for c in bad)


def _core_modules_bound(tree: ast.AST) -> set[str]:
    """Local names bound to a core module by ``from raylite.core import x [as y]``."""
    names = set()
    for node in _walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "raylite.core":
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("raylite.core."):
            names.update(a.asname or a.name for a in node.names
                         if f"{node.module}.{a.name}" in MODULES)
    return names


def private_uses(module: str, tree: ast.AST) -> list[str]:
    """Where ``module`` imports or reads a name starting with ``_`` of the core."""
    bad = []
    for node, source, names in _imports(module, tree):
        if _in(source, ("raylite.core",)):
            bad += [f"{module}:{node.lineno} imports {source}.{n}" for n in names
                    if n.startswith("_")]
            if any(part.startswith("_") for part in source.split(".")):
                bad.append(f"{module}:{node.lineno} imports {source}")
    bound = _core_modules_bound(tree)
    for node in _walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in bound and node.attr.startswith("_"):
            bad.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    return bad


def test_private_uses_are_found():
    code = ("def f():\n    from raylite.core import driver\n"
            "    driver._State.cluster = None\n"
            "from raylite.core.driver import _State, LocalCluster\n")
    assert private_uses("raylite.x", ast.parse(code)) == [
        "raylite.x:4 imports raylite.core.driver._State", "raylite.x:3 uses driver._State"]


def test_nothing_outside_the_core_uses_its_private_names():
    bad = []
    for module, path in sorted(MODULES.items()):
        if not _in(module, ("raylite.core",)):
            bad += private_uses(module, ast.parse(path.read_text()))
    assert not bad, "\n".join(bad)


LIBRARIES = ("raylite.serve", "raylite.widgets", "raylite.train", "raylite.data",
             "raylite.llm", "raylite.models")
CORE_INTERFACE = ("raylite.core.runtime_api",)


def test_libraries_use_only_the_public_api_of_the_core():
    """Serve, widgets, Train, Data, LLM: ``raylite``, ``raylite.util``,
    ``raylite.exceptions`` and the runtime interface; no other core module."""
    bad = [f"{m} imports {t}" for m, targets in sorted(import_graph().items())
           if _in(m, LIBRARIES)
           for t in sorted(targets) if _in(t, ("raylite.core",)) and t not in CORE_INTERFACE]
    assert not bad, "\n".join(bad)


def test_no_module_over_600_lines():
    long = {m: n for m, p in MODULES.items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    unexplained = {m: n for m, n in long.items() if m not in TOO_LONG_OK}
    assert not unexplained, f"modules over {MAX_LINES} lines (split them): {unexplained}"
    stale = set(TOO_LONG_OK) - set(long)
    assert not stale, f"no longer over {MAX_LINES} lines, drop from TOO_LONG_OK: {stale}"
