"""Edges between the library's packages that a reader should be able to trust.

- Only the store reads the store: outside ``l2s_data/store/`` no module imports the store
  modules that open chunks, manifests, tables or the catalog connection; it goes through
  ``l2s_data.store`` (``Store``, ``Key``) and the pure helpers of ``contract`` and ``catalog``.
- No SQL is built by string formatting outside the store: values reach the catalog as ``?``
  parameters, and a user's ``where`` fragment only through ``steer.selection.where_sql``, which
  checks it as the loader does.
- ``behaviors/`` sits at the bottom beside the store and imports nothing from it.
- Packages import only downward (DESIGN.md section 3), inside functions too: :data:`FLOORS`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import l2s_data

ROOT = Path(l2s_data.__file__).parent
STORE = ROOT / "store"

#: Store modules that hold the on-disk and connection machinery: only the store imports them.
STORE_INTERNALS = {"_backend", "_chunks", "_zarr_write", "manifests", "leases", "tables", "snapshot", "writer",
                   "attempts", "compaction", "layout", "rounds", "export",
                   "loader", "ops", "store", "connection", "catalog_pool"}
#: Names of ``store.catalog`` that open a connection (its pure parsing helpers may be used).
CATALOG_CONNECTIONS = {"Catalog", "export_catalog", "RowStream"}
#: The one function outside the store that splices a (checked) ``where`` fragment into SQL.
WHERE_SPLICE = ("steer/selection.py", "where_sql")
#: Modules whose SQL is still being rewritten to parameters (none left).
PENDING_SQL: set[str] = set()
#: SQL text printed for a user to paste into `l2s sql` (a command line cannot bind parameters).
PRINTED_SQL = {("demo.py", "demo_sql")}
SQL_CALLS = {"sql", "query", "execute", "head", "stream"}


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> ast.AST:
    """A module's syntax tree, parsed once for all the tests here (they only read it)."""
    return ast.parse(path.read_text())


def _modules(folder: Path = ROOT):
    for path in sorted(folder.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), _parsed(path)


def _outside_store():
    return [(rel, tree) for rel, tree in _modules() if not rel.startswith("store/")]


def _imports(tree: ast.AST):
    """(module, name) for every import in ``tree``, inside functions too; name None for ``import m``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                yield node.module, a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None


def _store_module(module: str, name: str | None) -> str | None:
    """The store module an import reaches, if any (``from l2s_data.store import x`` reaches the package)."""
    if module.startswith("l2s_data.store."):
        return module.split(".")[2]
    if module == "l2s_data" and name == "store":
        return "__init__"
    return "__init__" if module == "l2s_data.store" else None


def test_nothing_outside_the_store_imports_the_modules_that_open_chunks_manifests_or_the_catalog():
    bad = []
    for rel, tree in _outside_store():
        for module, name in _imports(tree):
            mod = _store_module(module, name)
            if mod in STORE_INTERNALS or (mod == "catalog" and name in CATALOG_CONNECTIONS):
                bad.append(f"{rel}: from {module} import {name}")
    assert not bad, "go through l2s_data.store (Store, Key) instead: " + "; ".join(bad)


def _sql_text(node: ast.AST) -> str:
    """The literal text of an f-string, a ``"...".format`` call, a ``"..." % x`` or a ``"..." + x``."""
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)):
        return node.func.value.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        parts = [node.left, node.right]
        if any(not isinstance(p, ast.Constant) for p in parts):
            return " ".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str))
    return ""


def _formatted_sql(tree: ast.AST):
    """(line, function, text) of each string built by formatting that reads as SQL: it begins
    with SELECT, WITH or WHERE, or it is handed to a ``sql``/``query``-like call."""
    funcs = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                funcs.setdefault(id(node), fn.name)
    handed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            handed |= {id(a) for a in node.args[:2]}
    for node in ast.walk(tree):
        text = _sql_text(node)
        if not text:
            continue
        head = text.lstrip().upper()
        if head.startswith(("SELECT ", "WITH ", "WHERE ")) or (id(node) in handed and ("SELECT" in text or "WHERE" in text)):
            yield node.lineno, funcs.get(id(node)), text


def test_no_module_outside_the_store_builds_sql_by_string_formatting():
    bad = []
    for rel, tree in _outside_store():
        if rel in PENDING_SQL:
            continue
        for line, func, text in _formatted_sql(tree):
            if (rel, func) == WHERE_SPLICE or (rel, func) in PRINTED_SQL:
                continue
            bad.append(f"{rel}:{line} ({func}): {text[:60]!r}")
    assert not bad, "pass values as ? parameters (steer.selection.query) instead: " + "; ".join(bad)


def test_the_sql_check_sees_a_formatted_query_and_a_formatted_where():
    tree = ast.parse(
        "def f(store, rid, w):\n"
        "    store.sql(f\"SELECT * FROM runs WHERE run_id = '{rid}'\")\n"
        "    q = 'SELECT * FROM samples WHERE %s' % w\n"
        "    store.sql('SELECT * FROM runs WHERE run_id = ?', [rid])\n"
    )
    assert sorted(line for line, _, _ in _formatted_sql(tree)) == [2, 3]


def test_behaviors_import_nothing_from_the_store():
    bad = [f"{rel}: {module}" for rel, tree in _modules(ROOT / "behaviors")
           for module, name in _imports(tree) if _store_module(module, name) is not None]
    assert not bad, bad


#: The library's floors, bottom first (DESIGN.md section 3): a module imports only from lower floors.
FLOORS = (
    {"errors", "schemas"},
    {"configfile", "actors", "submit", "figures", "memo"},
    {"models", "datasets", "behaviors", "store"},
    {"extract", "steer"},
    {"train", "evaluate"},
    {"trained_tiny", "serve"},
    {"demo"},
    {"cli"},
)


def _floor(part: str) -> int:
    for i, names in enumerate(FLOORS):
        if part in names:
            return i
    raise AssertionError(f"l2s_data/{part} has no floor in FLOORS: place it there (and in DESIGN.md section 3)")


def test_every_import_goes_down_a_floor_inside_functions_too():
    up = []
    for rel, tree in _modules():
        first = rel.split("/")[0]
        src = first[:-3] if first.endswith(".py") else first
        if src == "__init__":
            continue
        for module, name in _imports(tree):
            if not module.startswith("l2s_data."):
                continue
            dst = module.split(".")[1]
            if dst != src and _floor(dst) >= _floor(src):
                up.append(f"{rel}: {module} ({dst}, floor {_floor(dst)} >= {src}'s {_floor(src)})")
    assert not up, "imports that do not go down: " + "; ".join(up)
