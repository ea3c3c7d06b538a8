"""The layers keep to their contracts: checked on the source, so a shortcut fails a test.

* No module outside ``statestore.storage`` imports a private module or name of it: the
  operations, the command line, the engine and the demo use the public Storage API.
* No module of the package imports, directly or through others, a module that imports
  it back (imports under ``TYPE_CHECKING`` count: a circle there is a circle in the
  design).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import statestore

PACKAGE = Path(statestore.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["statestore", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, str]]:
    """``(module, imported name or "")`` for every import of the module, resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield module, alias.name


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


def test_no_layer_reaches_into_private_storage_names() -> None:
    reaches = []
    for name, path in MODULES.items():
        if name == "statestore.storage" or name.startswith("statestore.storage."):
            continue
        for module, imported in _imports(name, path):
            if not module.startswith("statestore.storage"):
                continue
            target = f"{module}.{imported}" if imported else module
            if _is_private(target.removeprefix("statestore.")):
                reaches.append(f"{name} imports {target}")
    assert reaches == []


def _edges(name: str, path: Path) -> set[str]:
    """The package's modules this one imports: ``from P import m`` is an edge to P.m
    when that is a module, else to P."""
    edges = set()
    for module, imported in _imports(name, path):
        candidate = f"{module}.{imported}"
        if candidate in MODULES:
            edges.add(candidate)
        elif module in MODULES:
            edges.add(module)
    edges.discard(name)
    return edges


def test_the_package_has_no_import_circle() -> None:
    graph = {name: _edges(name, path) for name, path in MODULES.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert circles == []
