"""The SQL catalog: a sandboxed, in-memory DuckDB over the store's committed tables.

Each :class:`Catalog` opens a fresh in-memory connection, registers the committed Parquet parts
as pyarrow datasets (read through fsspec, never through DuckDB extensions) and the snapshot's
manifest rows, creates the views of ``schemas/catalog.sql``, and only then locks it down::

    SET enable_external_access = false   -- no file reads, COPY, ATTACH, INSTALL/LOAD
    SET lock_configuration = true        -- and no SET to turn it back on

On top of that lock, each statement is parsed first and anything but a single read-only query
is refused with :class:`SQLRefusedError`, so nothing a user types reaches the store's files.
Fragments that the library splices into its own queries (the loader's WHERE clause) go through
:func:`check_where` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from l2s_data.errors import SQLRefusedError, StoreError
from l2s_data.schemas import TABLES, catalog_sql

if TYPE_CHECKING:
    from l2s_data.store.snapshot import Snapshot
    from l2s_data.store.store import Store

__all__ = ["Catalog", "check_where", "parse_one", "export_catalog", "VIEWS"]

#: Views a user can query.
VIEWS = ("samples", "memberships", "recipes", "manifests", "runs", "evaluations", "errors", "extractions",
         "shards")

_READ_ONLY = {duckdb.StatementType.SELECT}
_FIX = (
    "Only one read-only SELECT over the catalog views "
    f"({', '.join(VIEWS)}) is allowed; the catalog cannot write, read files, attach databases, "
    "install extensions or change settings. To work elsewhere, `l2s catalog export FILE.duckdb`."
)


def _refuse(query: str, why: str) -> SQLRefusedError:
    shown = query if len(query) <= 200 else query[:200] + "..."
    return SQLRefusedError(f"SQL refused ({why}): {shown!r}. {_FIX}")


class Catalog:
    """A locked DuckDB connection over one snapshot of a store. Use as a context manager."""

    def __init__(self, store: Store, *, snapshot: Snapshot | None = None):
        self.store = store
        self.snapshot = snapshot if snapshot is not None else store.snapshot()
        self.con = duckdb.connect(":memory:")
        try:
            self._build()
        except BaseException:
            self.con.close()
            raise

    def _build(self) -> None:
        con = self.con
        con.execute("SET threads TO 2")
        for name in TABLES:
            if name == "manifests":
                con.register("_manifests", self.snapshot.manifests)
            else:
                con.register(f"_{name}", self.store.dataset(name))
        for stmt in con.extract_statements(catalog_sql()):
            con.execute(stmt)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def statement(self, query: str) -> duckdb.Statement:
        """Parse ``query``; SQLRefusedError unless it is exactly one read-only SELECT."""
        return parse_one(query, self.con)

    def query(self, query: str, params: list | None = None) -> pa.Table:
        """Run one read-only SELECT and return its rows."""
        st = self.statement(query)
        try:
            return self.con.sql(st.query, params=params or None).to_arrow_table()
        except duckdb.PermissionException as exc:
            raise _refuse(query, f"needs external access: {exc}") from exc
        except (duckdb.InvalidInputException, duckdb.CatalogException, duckdb.BinderException,
                duckdb.ParserException, duckdb.ConversionException) as exc:
            if "external access" in str(exc).lower() or "lock" in str(exc).lower():
                raise _refuse(query, str(exc)) from exc
            raise StoreError(f"SQL failed: {exc}. Query: {query!r}") from exc
        except duckdb.Error as exc:
            if "external access" in str(exc).lower() or "disabled" in str(exc).lower():
                raise _refuse(query, str(exc)) from exc
            raise StoreError(f"SQL failed: {exc}. Query: {query!r}") from exc


def parse_one(query: str, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.Statement:
    """Parse ``query``; SQLRefusedError unless it is exactly one read-only SELECT."""
    if not isinstance(query, str) or not query.strip():
        raise _refuse(str(query), "empty query")
    own = con is None
    con = duckdb.connect(":memory:") if own else con
    try:
        stmts = con.extract_statements(query)
    except duckdb.Error as exc:
        raise StoreError(f"SQL does not parse: {exc}. Query: {query!r}") from exc
    finally:
        if own:
            con.close()
    if len(stmts) != 1:
        raise _refuse(query, f"{len(stmts)} statements; exactly one is allowed")
    st = stmts[0]
    if st.type not in _READ_ONLY:
        raise _refuse(query, f"{st.type.name} statement")
    return st


def _scan_tokens(fragment: str) -> list[str]:
    """Split a SQL fragment into coarse tokens, honouring quotes; refuse comments and ';'."""
    out: list[str] = []
    i, n = 0, len(fragment)
    while i < n:
        ch = fragment[i]
        if ch in "'\"":
            j = i + 1
            while True:
                j = fragment.find(ch, j)
                if j < 0:
                    raise _refuse(fragment, "unterminated quote in WHERE fragment")
                if j + 1 < n and fragment[j + 1] == ch:  # doubled quote = escaped
                    j += 2
                    continue
                break
            out.append(fragment[i : j + 1])
            i = j + 1
        elif fragment.startswith("--", i) or fragment.startswith("/*", i):
            raise _refuse(fragment, "comments are not allowed in a WHERE fragment")
        elif ch == ";":
            raise _refuse(fragment, "';' would end the query and start another statement")
        elif ch in "()":
            out.append(ch)
            i += 1
        else:
            i += 1
    return out


def check_where(con: duckdb.DuckDBPyConnection, fragment: str) -> str:
    """Validate a user WHERE fragment before the library splices it into ``WHERE (...)``.

    Refused: ';', comments, quotes left open, parentheses that close the library's own
    parenthesis, and anything that does not leave exactly one SELECT when spliced in.
    """
    if not isinstance(fragment, str) or not fragment.strip():
        raise _refuse(str(fragment), "empty WHERE fragment")
    depth = 0
    for tok in _scan_tokens(fragment):
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
            if depth < 0:
                raise _refuse(fragment, "unbalanced ')' would close the library's WHERE (...)")
    if depth != 0:
        raise _refuse(fragment, "unbalanced '(' in WHERE fragment")
    probe = f"SELECT 1 FROM (SELECT 1 AS x) AS t WHERE ({fragment})"
    try:
        stmts = con.extract_statements(probe)
    except duckdb.Error as exc:
        raise StoreError(f"WHERE fragment does not parse: {exc}. Fragment: {fragment!r}") from exc
    if len(stmts) != 1 or stmts[0].type not in _READ_ONLY:
        raise _refuse(fragment, "WHERE fragment does not stay a single SELECT")
    return fragment


def export_catalog(store: Store, path: str, *, snapshot: Snapshot | None = None) -> dict[str, int]:
    """Materialise every catalog view as a table in a new DuckDB file; returns rows per table.

    The file is written by this process, not by user SQL, so the sandbox stays closed.
    """
    import os

    if os.path.exists(path):
        raise StoreError(f"{path} exists; the export never overwrites. Remove it or choose another name.")
    with Catalog(store, snapshot=snapshot) as cat:
        tables = {v: cat.query(f"SELECT * FROM {v}") for v in VIEWS}
    out = duckdb.connect(path)
    counts: dict[str, int] = {}
    try:
        for v, t in tables.items():
            out.register("_t", t)
            out.execute(f"CREATE TABLE {v} AS SELECT * FROM _t")
            out.unregister("_t")
            counts[v] = t.num_rows
        out.execute("CREATE TABLE l2s_snapshot AS SELECT ? AS snapshot_id, ? AS store_url",
                    [cat.snapshot.id, store.url])
    finally:
        out.close()
    return counts
