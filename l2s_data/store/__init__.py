"""The activation store: immutable Zarr v3 shard attempts, checked create-if-absent manifests,
a sandboxed DuckDB catalog, and a chunk-streaming loader. See ``README.md`` beside this file.

Layers, each importing only those below it (``tests/store/test_layers.py`` checks it)::

    contract                      names, paths, canonical JSON, hashes, recipe ids, dtypes
    _backend                      bytes on a filesystem; create-if-absent
    manifests, leases, tables,    checked manifest files; maintenance leases; Parquet parts;
    _chunks, attempts, limits,    chunk files; attempt folders; SQL limits; what user SQL may be
    sandbox, _zarr_write
    snapshot                      the committed manifests at one moment; key lookups
    writer, catalog, layout,      shard attempts; the SQL connection; where rows live;
    compaction, ops               compaction by size tier; maintenance
    rounds, export                a layout read round by round; a catalog written to a DuckDB file
    loader, admin                 the torch dataset; ``store.admin``, the whole-store operations
    store                         ``Store``: a facade of five verbs composing them

The public names are imported lazily, so ``l2s_data.store.contract`` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Store", "Admin", "Key", "StoredRecipe", "Snapshot", "ShardWriter", "DEFAULT_CHUNK_BYTES", "written_whole"]

_WHERE = {
    "Store": "l2s_data.store.store",
    "Admin": "l2s_data.store.admin",
    "StoredRecipe": "l2s_data.store.tables",
    "Key": "l2s_data.store.snapshot",
    "Snapshot": "l2s_data.store.snapshot",
    "ShardWriter": "l2s_data.store.writer",
    "DEFAULT_CHUNK_BYTES": "l2s_data.store.writer",
    "written_whole": "l2s_data.store.export",
}

if TYPE_CHECKING:  # pragma: no cover
    from l2s_data.store.admin import Admin
    from l2s_data.store.tables import StoredRecipe
    from l2s_data.store.snapshot import Key, Snapshot
    from l2s_data.store.store import Store
    from l2s_data.store.export import written_whole
    from l2s_data.store.writer import DEFAULT_CHUNK_BYTES, ShardWriter


def __getattr__(name: str) -> Any:
    if name in _WHERE:  # lazily: importing the package must not import torch, duckdb or zarr
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'l2s_data.store' has no attribute {name!r}")
