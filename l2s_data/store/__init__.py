"""The activation store: immutable Zarr v3 shard attempts, create-if-absent manifests,
a sandboxed DuckDB catalog, and a chunk-streaming loader. See ``README.md`` beside this file."""

from __future__ import annotations

from l2s_data.store.snapshot import Key, Snapshot
from l2s_data.store.store import Store
from l2s_data.store.writer import DEFAULT_CHUNK_BYTES, ShardWriter

__all__ = ["Store", "Key", "Snapshot", "ShardWriter", "DEFAULT_CHUNK_BYTES"]
