"""The store is a stack of layers: each module imports only modules of lower layers.

A module that imported one at its own layer or above would bring back the circle that
catalog, loader, snapshot, store and writer once formed. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import l2s_data.store

PACKAGE = Path(l2s_data.store.__file__).parent

#: Layer of every module of l2s_data/store (see the package docstring).
LAYERS = {
    "contract": 0,
    "_backend": 1,
    "_zarr_write": 2, "_chunks": 2, "manifests": 2, "leases": 2, "tables": 2, "attempts": 2,
    "limits": 2, "sandbox": 2, "catalog_pool": 2,
    "snapshot": 3, "connection": 3, "sql_errors": 3,
    "writer": 4, "catalog": 4, "layout": 4, "ops": 4, "compaction": 4,
    "rounds": 5, "export": 5,
    "loader": 6, "admin": 6,
    "store": 7,
}


def _store_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "l2s_data.store":
                out |= {a.name for a in node.names}
            elif node.module.startswith("l2s_data.store."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[2] for a in node.names if a.name.startswith("l2s_data.store.")}
    return out


def test_every_store_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert modules == set(LAYERS), "give each new module of l2s_data/store a layer in LAYERS"


def test_store_modules_import_only_lower_layers():
    bad = []
    for name, layer in LAYERS.items():
        for dep in _store_imports(PACKAGE / f"{name}.py"):
            if dep not in LAYERS or LAYERS[dep] >= layer:
                bad.append(f"{name} (layer {layer}) imports {dep} (layer {LAYERS.get(dep, '?')})")
    assert not bad, bad


def test_no_module_outside_the_store_reaches_into_its_private_state():
    root = PACKAGE.parent
    offenders = []
    for path in root.rglob("*.py"):
        if PACKAGE in path.parents:
            continue
        text = path.read_text()
        for private in ("._backend", "._tables", "._compacted", "._recipes"):
            if private in text:
                offenders.append(f"{path.relative_to(root)}: {private}")
    assert not offenders, offenders
