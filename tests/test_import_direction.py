"""The layers of ``harnet`` import one way: config and utils below everything, modeling and data beside each
other, engine above them, tools on top, and deploy the torch-free runtime beside it all.

Read from the source with ``ast``, not by importing: every ``import`` statement counts, at module level, inside
functions and under ``if TYPE_CHECKING:`` (a type-only import still ties the two modules together: a cycle
through one is a cycle as soon as the annotation is needed at runtime, and it is what a reader follows).
Dynamic imports (``importlib.import_module`` of a computed name) are not seen.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The runtime a device installs beside harnet.deploy (with the standard library): numpy, pillow and a runtime, plus
# the optional extras loaded on use (rasters and maps: the [geo] extra; video: PyAV; a progress bar: tqdm; the
# HTTP server of harnet.deploy.serve: the [serve] extra); and what must never load there.
DEPLOY_THIRD_PARTY = {"numpy", "PIL", "onnxruntime", "openvino", "rasterio", "geopandas", "pyogrio", "pyproj",
                      "shapely", "av", "tqdm", "fastapi", "uvicorn", "starlette", "anyio", "pydantic"}
TORCH = {"torch", "torchvision", "timm"}

# package -> the harnet packages it must not import (a package never counts against itself)
FORBIDDEN = {
    "harnet.modeling": ("harnet.engine", "harnet.tools", "harnet.data"),
    "harnet.data": ("harnet.engine", "harnet.tools", "harnet.modeling"),
    "harnet.engine": ("harnet.tools",),
}
# package -> the only harnet packages it may import
ALLOWED = {
    "harnet.utils": ("harnet.utils",),
    "harnet.config": ("harnet.config", "harnet.utils"),
    "harnet.deploy": ("harnet.deploy", "harnet.config", "harnet.utils"),
}

# Cycles known today, each the set of modules of one strongly connected component. An entry whose cycle is
# gone fails the test, so that the list only shrinks.
ALLOWED_CYCLES: list[frozenset[str]] = []


@cache
def modules() -> dict[str, Path]:
    """Every module under src/harnet by dotted name (a package by its own name, from its __init__.py)."""
    found = {}
    for path in sorted((SRC / "harnet").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@cache
def imports(module: str) -> frozenset[str]:
    """The modules ``module`` names in any import statement of its source: ``import a.b`` -> ``a.b``;
    ``from a import b`` -> ``a.b`` when that is a harnet module (a submodule), else ``a``."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if sub in modules() else base)
    return frozenset(names)


def harnet_imports(module: str) -> set[str]:
    return {name for name in imports(module) if name == "harnet" or name.startswith("harnet.")}


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def modules_of(package: str) -> list[str]:
    return [m for m in modules() if in_package(m, package)]


def test_the_sources_are_found() -> None:
    assert {"harnet.engine.trainer", "harnet.deploy", "harnet.config.model", "harnet.utils.compat"} <= set(modules())
    assert "harnet.engine.hooks" in harnet_imports("harnet.engine.trainer")
    assert "harnet.engine.evaluation" in harnet_imports("harnet.engine.hooks")  # an `if TYPE_CHECKING:` import
    assert "harnet.modeling.harnet" in harnet_imports("harnet.tools.cli")  # a function-level import


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_no_layer_above_it(package: str) -> None:
    wrong = [f"{m} imports {name}" for m in modules_of(package) for name in sorted(harnet_imports(m))
             if any(in_package(name, other) for other in FORBIDDEN[package])]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_the_bottom_layers_and_deploy_import_only_what_they_may(package: str) -> None:
    wrong = [f"{m} imports {name}" for m in modules_of(package) for name in sorted(harnet_imports(m))
             if not any(in_package(name, ok) for ok in ALLOWED[package])]
    assert not wrong, "\n".join(wrong)


def test_deploy_needs_only_numpy_pillow_and_a_runtime() -> None:
    """Its own modules import the standard library, numpy, PIL, onnxruntime or OpenVINO (and the optional
    extras of :data:`DEPLOY_THIRD_PARTY`) and nothing else outside harnet; and no harnet module it reaches,
    directly or through others, imports torch, torchvision or timm."""
    outside = [f"{m} imports {name}" for m in modules_of("harnet.deploy") for name in sorted(imports(m))
               if not in_package(name, "harnet")
               and name.split(".")[0] not in DEPLOY_THIRD_PARTY | set(sys.stdlib_module_names)]
    assert not outside, "\n".join(outside)
    reached = _reachable(modules_of("harnet.deploy"))
    torch_users = [f"{m} imports {name}" for m in sorted(reached) for name in sorted(imports(m))
                   if name.split(".")[0] in TORCH]
    assert not torch_users, "\n".join(torch_users)


def test_importing_deploy_loads_no_torch() -> None:
    code = "import harnet.deploy, sys; assert 'torch' not in sys.modules, 'harnet.deploy loaded torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_env_with_src())
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_import_cycles() -> None:
    """Modules inside harnet form no cycle (each strongly connected component of the import graph is one
    module), except the :data:`ALLOWED_CYCLES` entries, which must still exist."""
    cycles = {frozenset(c): c for c in _cycles()}
    found = [f"{' -> '.join(cycle)} -> {cycle[0]}" for members, cycle in cycles.items()
             if members not in ALLOWED_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(found)
    gone = [sorted(members) for members in ALLOWED_CYCLES if members not in cycles]
    assert not gone, f"no longer a cycle, delete from ALLOWED_CYCLES: {gone}"


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(sorted(c) for c in _cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert _cycles(graph)[0] == ["a", "b", "c"]  # named in import order, from its first module


def _graph() -> dict[str, set[str]]:
    return {m: harnet_imports(m) & set(modules()) for m in modules()}


def _reachable(start: Iterable[str]) -> set[str]:
    graph, seen, todo = _graph(), set(start), list(start)
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


def _cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """One cycle per strongly connected component with a cycle (Tarjan), as the path of imports that closes it,
    starting at the component's first module in sorted order."""
    graph = _graph() if graph is None else graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_back(graph, component) for component in sorted(components, key=min)]


def _path_back(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest chain of imports inside ``component`` from its first module back to itself."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not a cycle")


def _env_with_src() -> dict[str, str]:
    """This checkout's src first on the path, as the test process has it (an installed harnet may be another)."""
    paths = [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
