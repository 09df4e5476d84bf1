"""The package's layout: every module imports, and module-level imports run one way."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import cacheman

PACKAGE = Path(cacheman.__file__).parent


def module_names() -> list[str]:
    """Every module of the package and of its sub-packages, each ``__init__`` included."""
    found = (info.name for info in pkgutil.walk_packages([str(PACKAGE)], "cacheman."))
    return ["cacheman", *sorted(found)]


def source_of(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _package_of(module: str) -> str:
    return module if source_of(module).name == "__init__.py" else module.rpartition(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not type-only."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                found += _module_level_imports(block)
            for handler in node.handlers:
                found += _module_level_imports(handler.body)
        elif isinstance(node, ast.With):
            found += _module_level_imports(node.body)
    return found


def imported_modules(module: str) -> set[str]:
    """The cacheman modules ``module`` imports at module level."""
    tree = ast.parse(source_of(module).read_text(encoding="utf-8"))
    known = set(module_names())
    targets: set[str] = set()
    for node in _module_level_imports(tree.body):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.level == 0:  # "from cacheman.x import y": x, and y if it is a submodule
            names = [node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            base = importlib.util.resolve_name("." * node.level, _package_of(module))
            if node.module:  # "from .x import y": runs x, and y too if y is a submodule of x
                base = f"{base}.{node.module}"
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:  # "from . import x, y": runs the submodules x and y, not __init__ again
                names = [f"{base}.{alias.name}" for alias in node.names]
        targets.update(name for name in names if name in known)
    targets.discard(module)
    return targets


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_every_module_imports() -> None:
    for name in module_names():
        importlib.import_module(name)


def test_the_module_level_import_graph_has_no_cycle() -> None:
    graph = {name: imported_modules(name) for name in module_names()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_layers_the_design_asks_for() -> None:
    graph = {name: imported_modules(name) for name in module_names()}
    # Caches get the default manager through _registry, never from cacher.
    assert "cacheman.cacher" not in graph["cacheman.cachewrap"]
    # Fork mechanics and the process lifecycle know nothing of caches.
    cache_modules = {"cacheman.cacher", "cacheman.cachewrap", "cacheman.autosync"}
    cache_modules.add("cacheman.csvcache")
    assert not graph["cacheman._process.fork"] & (cache_modules | {"cacheman._process.background"})
    assert not graph["cacheman._process.lifecycle"]
    assert not graph["cacheman._process.background"] & cache_modules


def test_stores_know_nothing_of_caches() -> None:
    # Not even inside a function or for type checking: a store serves any cache, and
    # imports run one way (the persistent cache and memoize use stores, not the reverse).
    cache_modules = {"cacheman.cachewrap", "cacheman.cacher", "cacheman.autosync"}
    stores = [name for name in module_names() if name.startswith("cacheman._stores.")]
    assert stores
    for name in stores:
        tree = ast.parse(source_of(name).read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = importlib.util.resolve_name("." * node.level + base, _package_of(name))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        assert not found & cache_modules, f"{name} imports {sorted(found & cache_modules)}"
        above = {m for m in found if m.startswith(("cacheman._persist", "cacheman._memo"))}
        assert not above, f"{name} imports {sorted(above)}"


def test_the_process_modules_know_nothing_of_caches() -> None:
    graph = {name: imported_modules(name) for name in module_names()}
    cache_modules = {
        "cacheman.cacher",
        "cacheman.cachewrap",
        "cacheman.autosync",
        "cacheman.csvcache",
    }
    process = [name for name in graph if name.startswith("cacheman._process.")]
    assert process
    for name in process:
        assert not graph[name] & cache_modules, name


def test_submodules_imported_from_a_package_count() -> None:
    # "from ._process import lifecycle" runs cacheman._process.lifecycle.
    assert "cacheman._process.lifecycle" in imported_modules("cacheman.cachewrap")
