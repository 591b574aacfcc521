"""The catalog's connection: an in-memory DuckDB over one snapshot of a store, locked down.

:func:`build` opens a fresh in-memory connection, registers the committed Parquet parts as
pyarrow datasets (read through fsspec, never through DuckDB extensions) and the snapshot's
manifest rows (on a local disk, read by DuckDB's own Parquet reader from exactly the snapshot's
files, the only paths it may open), creates the views of ``schemas/catalog.sql``, sets its
resource limits (:class:`SQLLimits`), and only then locks it down::

    SET allowed_paths = [the snapshot's manifest files]   -- local stores
    SET memory_limit = ...               -- a share of RAM by default
    SET temp_directory = ''              -- no spilling, unless asked, then a private folder
    SET enable_external_access = false   -- no file reads, COPY, ATTACH, INSTALL/LOAD
    SET lock_configuration = true        -- and no SET to turn any of it back on

The parts registered are exactly those a :class:`~l2s_data.store.catalog_pool.CatalogKey`
names, so that a connection reused under an equal key shows what a fresh one would.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from l2s_data.schemas import TABLES, catalog_sql
from l2s_data.store.catalog_pool import CatalogKey
from l2s_data.store.limits import SQLLimits, parse_size

if TYPE_CHECKING:
    from l2s_data.store._backend import Backend
    from l2s_data.store.tables import Tables

__all__ = ["Locked", "build", "register_manifests"]


class Snapshot(Protocol):
    """What a connection reads of a ``snapshot.Snapshot`` (a layer above this one)."""

    files: tuple[str, ...]
    excluded: frozenset[str]

    def excluded_table(self) -> pa.Table: ...

    def visible_dataset(self) -> pads.Dataset: ...


@dataclass
class Locked:
    """A locked connection and what it owns: what ``catalog_pool`` keeps between catalogs."""

    con: duckdb.DuckDBPyConnection
    #: the private spill folder (None: spilling off), removed on close
    spill_dir: str | None
    #: the only files DuckDB may open (the snapshot's manifest files, on a local disk)
    readable: frozenset[str]

    def close(self) -> None:
        self.con.close()
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None


def build(tables: Tables, snapshot: Snapshot, limits: SQLLimits, key: CatalogKey) -> Locked:
    """A new locked connection over ``snapshot`` and the table parts ``key`` names."""
    db = Locked(duckdb.connect(":memory:"), None, frozenset())
    try:
        con = db.con
        con.execute("SET threads TO 2")
        backend = tables.backend
        if backend.is_local and snapshot.files:
            # DuckDB reads the snapshot's manifest files itself, and only those very files:
            # nothing else, in the store or outside it, once external access is off.
            db.readable = frozenset(backend.path(f) for f in snapshot.files)
            con.execute("SET allowed_paths = ?", [sorted(db.readable)])
        for name in TABLES:
            if name == "manifests":  # scanned lazily, live rows only (the view filters too)
                register_manifests(db, snapshot, backend)
            else:
                con.register(f"_{name}", tables.dataset(name, key.files(name)))
        for stmt in con.extract_statements(catalog_sql()):
            con.execute(stmt)
        _apply_limits(db, limits)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        db.close()
        raise
    return db


def register_manifests(db: Locked, snap: Snapshot, backend: Backend) -> None:
    """``_manifests``: the live rows of the snapshot's files, ``_excluded``: the attempts whose
    rows do not count. On a local disk DuckDB's own Parquet reader scans the files (parallel,
    reading only the columns and row groups a statement needs); elsewhere a pyarrow dataset read
    through fsspec."""
    con = db.con
    con.register("_excluded", snap.excluded_table())
    con.unregister("_manifests")
    paths = [backend.path(f) for f in snap.files]
    if not (backend.is_local and paths and set(paths) <= db.readable):
        # Elsewhere, or files that a compaction wrote since the catalog was locked (its
        # readable paths are fixed then): the same rows through a pyarrow dataset.
        con.register("_manifests", snap.visible_dataset())
        return
    rel = con.read_parquet(paths)
    if snap.excluded:  # an anti join keeps exactly the left side's columns
        rel = rel.join(con.table("_excluded"), "attempt", how="anti")
    rel.create_view("_manifests", replace=True)


def _apply_limits(db: Locked, limits: SQLLimits) -> None:
    """Memory and spilling; must run before the configuration is locked."""
    con = db.con
    con.execute(f"SET memory_limit = '{parse_size(limits.memory_limit)}B'")
    if limits.spill is None:
        # An in-memory DuckDB spills into ./.tmp of the working directory by default.
        con.execute("SET temp_directory = ''")
    else:
        db.spill_dir = tempfile.mkdtemp(prefix="l2s-sql-spill-")
        con.execute("SET temp_directory = ?", [db.spill_dir])  # a parameter: no quoting
        con.execute(f"SET max_temp_directory_size = '{parse_size(limits.spill)}B'")
