"""Exporting a catalog: every view materialised as a table of a new DuckDB file.

The file is written by this process, never by user SQL, so the sandbox stays closed; it
appears whole or not at all (:func:`written_whole`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import duckdb

from l2s_data.errors import StoreError
from l2s_data.store.catalog import Catalog
from l2s_data.store.limits import SQLLimits
from l2s_data.store.sandbox import VIEWS

if TYPE_CHECKING:
    from l2s_data.store.snapshot import Snapshot
    from l2s_data.store.tables import Tables

__all__ = ["export_catalog", "written_whole"]


def export_catalog(tables: Tables, snapshot: Snapshot, path: str, *, limits: SQLLimits | None = None,
                   **overrides: Any) -> dict[str, int]:
    """Materialise every catalog view as a table in a new DuckDB file; returns rows per table.

    The file is written by this process, not by user SQL, so the sandbox stays closed.
    """
    if os.path.exists(path):
        raise StoreError(f"{path} exists; the export never overwrites. Remove it or choose another name.")
    with Catalog(tables, snapshot, limits=limits, **overrides) as cat:
        views = {v: cat.query(f"SELECT * FROM {v}") for v in VIEWS}
    counts: dict[str, int] = {}
    with written_whole(path, extra_suffixes=(".wal",)) as partial:
        out = duckdb.connect(partial)
        try:
            for v, t in views.items():
                out.register("_t", t)
                out.execute(f"CREATE TABLE {v} AS SELECT * FROM _t")
                out.unregister("_t")
                counts[v] = t.num_rows
            out.execute("CREATE TABLE l2s_snapshot AS SELECT ? AS snapshot_id, ? AS store_url",
                        [cat.snapshot.id, tables.backend.url])
        finally:
            out.close()
        if os.path.exists(path):
            raise StoreError(f"{path} appeared during the export; the export never overwrites. The export "
                             f"was discarded.")
    return counts


@contextmanager
def written_whole(path: str, *, extra_suffixes: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield a temporary name beside ``path`` to write to. It becomes ``path`` (replacing it) if
    the block ends normally; what is left of it (and its ``extra_suffixes`` siblings, such as a
    DuckDB ``.wal``) is removed either way, so an interrupted write leaves no file that looks
    complete."""
    partial = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        for leftover in (partial, *(partial + x for x in extra_suffixes)):
            if os.path.exists(leftover):
                os.remove(leftover)
