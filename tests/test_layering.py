"""The package's layering (docs/architecture.md), read from the imports of ``src/deepcluster``.

Every import of a ``deepcluster`` module counts: top-level, inside functions, and under
``if TYPE_CHECKING:``. A module may import its own area (``deepcluster.train.*`` inside
``train/``) and anything in a lower layer; never an area of its own layer or one above it, and
no two modules may import each other, directly or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import deepcluster

PACKAGE = Path(deepcluster.__file__).parent

#: Bottom to top. An area is a module or a sub-package of ``deepcluster``.
LAYERS: list[tuple[str, ...]] = [
    ("core", ""),  # the bottom layer ("" = deepcluster/__init__.py)
    ("data", "models", "cluster"),
    ("features", "runs"),
    ("environment",),  # RunEnv: threads, device, precision, image source, FeatureOptions
    ("train", "evaluate"),
    ("analysis",),
    ("report",),
    ("interpret",),
    ("cli",),
    ("__main__",),  # python -m deepcluster (and torchrun -m deepcluster)
]
CORE = LAYERS[0]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``deepcluster`` modules ``name`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name and target.startswith("deepcluster"):
                found.add(target)
    return found


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(area: str) -> int:
    for i, areas in enumerate(LAYERS):
        if area in areas:
            return i
    raise AssertionError(f"area {area!r} is not in LAYERS: place it in a layer (and in docs/architecture.md)")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_area_has_a_layer():
    for module in _graph():
        _layer(_area(module))


def test_imports_only_go_down_the_layers():
    bad = []
    for module, targets in sorted(_graph().items()):
        area = _area(module)
        for target in sorted(targets):
            other = _area(target)
            if other == area or (area in CORE and other in CORE):
                continue
            if _layer(other) >= _layer(area):
                bad.append(f"{module} imports {target} (layer {_layer(other)} >= {_layer(area)})")
    assert not bad, "imports that run up or across the layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path):
    mod = tmp_path / "deepcluster" / "x.py"
    mod.parent.mkdir()
    mod.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from deepcluster.y import Z\n"
                   "def f():\n    from deepcluster import z\n")
    modules = {"deepcluster.x": mod, "deepcluster.y": mod, "deepcluster.z": mod}
    assert _imports("deepcluster.x", mod, modules) == {"deepcluster.y", "deepcluster.z"}


def test_no_area_imports_a_private_module_of_another():
    bad = []
    for module, targets in sorted(_graph().items()):
        for target in sorted(targets):
            private = any(part.startswith("_") and not part.startswith("__") for part in target.split(".")[1:])
            if private and _area(target) != _area(module):
                bad.append(f"{module} imports {target}")
    assert not bad, "imports of another area's private module:\n" + "\n".join(bad)
