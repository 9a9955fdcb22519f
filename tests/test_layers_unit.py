"""The import contracts of s3pool's layers (README, Development: Layout).

Every ``import`` in s3pool is read from the source, those inside functions
and under ``TYPE_CHECKING`` too (a lazy import hides a cycle from Python,
not from the design), and checked against the layer table: a module may
import its own package's modules and any package of a lower layer, never a
sibling or anything above it, and no chain of imports may come back to
where it started.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent / "s3pool"

# group -> rank; a module may import groups of a lower rank, and its own group
LAYERS = {
    "s3pool": 0,  # the package root: __version__
    "errors": 0,
    "client": 0,
    "logs": 1,
    "settings": 1,
    "embedded": 2,
    "store": 3,
    "s3": 4,
    "listing": 5,
    "download": 6,
    "upload": 6,
    "cache": 7,
    "fs": 8,
    "control": 8,
    "daemon": 9,
    "cli": 10,
}

MAX_TOP_MODULES = 8


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "s3pool"


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Every s3pool module *path* imports, anywhere in the file."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from s3pool.x import y": y may be a module of its own
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "s3pool":
                continue
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != me:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def test_every_module_belongs_to_a_layer() -> None:
    unknown = sorted(m for m in import_graph() if group(m) not in LAYERS)
    assert unknown == [], f"modules in no layer (add them to LAYERS and the README): {unknown}"


def test_no_import_reaches_up_or_sideways() -> None:
    steps = []
    for module, deps in import_graph().items():
        for dep in deps:
            mine, theirs = group(module), group(dep)
            if dep == "s3pool" or mine == theirs:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                steps.append(f"{module} -> {dep}")
    assert not steps, "imports that reach up or sideways:\n" + "\n".join(sorted(steps))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_even_through_lazy_imports() -> None:
    graph = {m: {d for d in deps if d != "s3pool"} for m, deps in import_graph().items()}
    assert find_cycle(graph) is None


def test_the_checker_sees_lazy_imports_and_cycles() -> None:
    # positive control: the walk finds an import inside a function, and a cycle
    tree = ast.parse("def f():\n    from s3pool.cache import Cache\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "s3pool.cache"
               for n in ast.walk(tree))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "s3pool.s3.backend" in graph["s3pool.cache"]
    assert "s3pool.settings" in graph["s3pool.store.evictor"]


def test_few_modules_at_the_top() -> None:
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
