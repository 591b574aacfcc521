"""The activation store: a folder at a URL holding Zarr shard attempts and committed Parquet.

::

    store = Store.open("runs/store", create=True)          # or "s3://bucket/store"
    rid = store.put_recipe({"model": "...", "layers": [14]}, name="llava-safety")
    with store.shard_writer("s-0", rid, ids) as w:
        w.write("p2s", "completion_last", 14, v, "float32")   # [len(ids), D]
    snap = store.snapshot()
    x = snap.read(rid, "p2s", "completion_last", 14, ids)     # float32 [len(ids), D]
    store.sql("SELECT view, count(*) FROM manifests GROUP BY view")

Every table (recipes, samples, memberships, errors, runs, evaluations) is a set of immutable,
content-addressed Parquet parts, each created only if absent, so writers never contend and a
retried write is a no-op. See DESIGN.md section 4 for the invariants.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from l2s_data.errors import KeyNotFoundError, SchemaMismatchError, StoreError, StoreNotFoundError
from l2s_data.schemas import (
    ERRORS, EVALUATIONS, EXTRACTIONS, FORMAT_VERSION, MEMBERSHIPS, RECIPES, RUNS, SAMPLES, TABLES,
)
from l2s_data.store._backend import Backend, open_backend
from l2s_data.store._format import (
    COMPACTED_PREFIX, MARKER, canonical_json, check_exact, conform, content_hash, now,
    parquet_bytes, sha256_hex,
)
from l2s_data.store.snapshot import Key, Snapshot, list_manifests, read_manifest
from l2s_data.store.writer import DEFAULT_CHUNK_BYTES, ShardWriter

__all__ = ["Store"]

_PART_TABLES = ("recipes", "samples", "memberships", "errors", "runs", "evaluations", "extractions")


class Store:
    """Open with :meth:`Store.open`. Thread-safe for reads; each writer owns its attempt."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.url: str = backend.url
        self._lock = threading.Lock()
        self._recipes: pa.Table | None = None
        self._compacted: dict[str, frozenset[str]] = {}

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | os.PathLike[str], *, create: bool = False) -> Store:
        """Open the store at a local path or fsspec URL; ``create=True`` makes it if absent."""
        backend = open_backend(url)
        if not backend.exists(MARKER):
            if not create:
                raise StoreNotFoundError(
                    f"no l2s-data store at {backend.url} (no {MARKER} there). Create one with "
                    f"Store.open(url, create=True), or check the URL."
                )
            backend.makedirs("")
            marker = {"format": "l2s-data store", "format_version": FORMAT_VERSION,
                      "created_at": now().isoformat()}
            backend.put_if_absent(MARKER, json.dumps(marker, indent=1).encode())
        meta = json.loads(backend.read_bytes(MARKER))
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise StoreError(
                f"store {backend.url} has format version {meta.get('format_version')}, newer than "
                f"this l2s-data's {FORMAT_VERSION}: upgrade l2s-data to read it."
            )
        return cls(backend)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- committed Parquet parts -----------------------------------------------------------
    def _put_part(self, table_name: str, table: pa.Table, part: str | None = None) -> str:
        part = part or content_hash(table)
        rel = f"{table_name}/{part}.parquet"
        self._backend.put_if_absent(rel, parquet_bytes(table))
        return rel

    def part_files(self, table_name: str) -> list[str]:
        return [f"{table_name}/{n}" for n in self._backend.listdir(table_name) if n.endswith(".parquet")]

    def dataset(self, table_name: str) -> pads.Dataset:
        """A pyarrow dataset over the committed parts of one table (pinned schema)."""
        if table_name not in _PART_TABLES:
            raise KeyError(f"unknown table {table_name!r}; expected one of {_PART_TABLES}.")
        files = [self._backend.path(f) for f in self.part_files(table_name)]
        return pads.dataset(files, schema=TABLES[table_name], format="parquet", filesystem=self._backend.fs)

    def table(self, table_name: str) -> pa.Table:
        """Every committed row of one table (rows may repeat across parts; the SQL views dedupe)."""
        if table_name == "manifests":
            return self.snapshot().manifests
        parts = []
        for f in self.part_files(table_name):
            t = pq.read_table(io.BytesIO(self._backend.read_bytes(f)))
            parts.append(check_exact(t, TABLES[table_name], what=f"{table_name} part {f}"))
        return pa.concat_tables(parts) if parts else TABLES[table_name].empty_table()

    # -- recipes ---------------------------------------------------------------------------
    def put_recipe(self, spec: Mapping[str, Any], *, name: str | None = None) -> str:
        """Register a recipe; its id is the sha256 (32 hex) of ``spec``'s canonical JSON.

        Idempotent. ``name`` is an optional alias that :class:`Key` and ``read`` accept in
        place of the id; a name already given to another recipe is refused.
        """
        if not isinstance(spec, Mapping):
            raise SchemaMismatchError(f"recipe spec must be a dict, got {type(spec).__name__}.")
        text = canonical_json(dict(spec))
        rid = sha256_hex(text)
        if name is not None:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise SchemaMismatchError(f"recipe name must be a non-empty string without edge spaces, got {name!r}.")
            other = self._recipe_table(refresh=True)
            clash = other.filter(pc.equal(other["name"], name))
            ids = set(clash["recipe_id"].to_pylist()) - {rid}
            if ids:
                raise SchemaMismatchError(
                    f"recipe name {name!r} already names recipe {sorted(ids)[0]}; pick another name."
                )
        row = pa.Table.from_pylist(
            [{"recipe_id": rid, "name": name, "spec_json": text, "created_at": now()}], schema=RECIPES
        )
        part = rid if name is None else f"{rid}-{sha256_hex(name, 16)}"
        self._put_part("recipes", row, part)
        self._recipes = None
        return rid

    def _recipe_table(self, *, refresh: bool = False) -> pa.Table:
        with self._lock:
            if self._recipes is None or refresh:
                self._recipes = self.table("recipes")
            return self._recipes

    def recipe_spec(self, recipe: str) -> dict[str, Any]:
        rid = self.resolve_recipe(recipe)
        t = self._recipe_table()
        t = t.filter(pc.equal(t["recipe_id"], rid))
        return json.loads(t["spec_json"][0].as_py())

    def resolve_recipe(self, recipe: str, *, must_exist: bool = True) -> str:
        """Recipe id for an id or a registered name (KeyNotFoundError if neither)."""
        for refresh in (False, True):
            t = self._recipe_table(refresh=refresh)
            ids = t["recipe_id"].to_pylist()
            if recipe in ids:
                return recipe
            named = {i for i, n in zip(ids, t["name"].to_pylist()) if n == recipe}
            if len(named) == 1:
                return named.pop()
        if not must_exist:
            return recipe
        raise KeyNotFoundError(
            f"recipe {recipe!r} is neither a recipe id nor a name in store {self.url}; "
            f"list them with `l2s sql \"SELECT recipe_id, name FROM recipes\"`."
        )

    # -- other tables ----------------------------------------------------------------------
    def put_samples(self, samples: pa.Table, memberships: pa.Table) -> None:
        """Commit samples and memberships (SAMPLES / MEMBERSHIPS schemas) as content-addressed parts."""
        s = conform(samples, SAMPLES, what="samples")
        m = conform(memberships, MEMBERSHIPS, what="memberships")
        if s.num_rows:
            self._put_part("samples", s)
        if m.num_rows:
            self._put_part("memberships", m)

    def put_errors(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Commit error rows (ERRORS schema; ``created_at`` defaults to now)."""
        self._put_rows("errors", ERRORS, rows)

    def put_runs(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Commit run rows (RUNS schema; ``created_at`` defaults to now)."""
        self._put_rows("runs", RUNS, rows)

    def put_extractions(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Commit extraction-run rows (EXTRACTIONS schema; ``created_at`` defaults to now)."""
        self._put_rows("extractions", EXTRACTIONS, rows)

    def put_evaluations(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Commit evaluation rows (EVALUATIONS schema; ``created_at`` defaults to now)."""
        self._put_rows("evaluations", EVALUATIONS, rows)

    def _put_rows(self, table: str, schema: pa.Schema, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        t = conform(rows, schema, what=table, defaults={"created_at": now()})
        if t.num_rows:
            self._put_part(table, t)

    # -- shards ----------------------------------------------------------------------------
    def shard_writer(self, shard_id: str, recipe_id: str, sample_ids: Sequence[str], *,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ShardWriter:
        """A new attempt at ``shard_id``; see :class:`~l2s_data.store.writer.ShardWriter`."""
        return ShardWriter(self, shard_id, recipe_id, sample_ids, chunk_bytes=chunk_bytes)

    def _compacted_shards(self) -> frozenset[str]:
        found: set[str] = set()
        for f in list_manifests(self._backend):
            name = f.rsplit("/", 1)[1]
            if not name.startswith(COMPACTED_PREFIX):
                continue
            if f not in self._compacted:
                try:
                    t = read_manifest(self._backend, f)
                except FileNotFoundError:
                    continue
                self._compacted[f] = frozenset(t["shard"].to_pylist())
            found |= self._compacted[f]
        return frozenset(found)

    def committed_shards(self) -> set[str]:
        return set(self.snapshot().shards)

    def is_committed(self, shard_id: str) -> bool:
        return self._backend.exists(f"manifests/{shard_id}.parquet") or shard_id in self._compacted_shards()

    def committed_keys(self, recipe_id: str) -> pa.Table:
        """Columns view, position, layer, sample_id of every committed key of one recipe."""
        rid = self.resolve_recipe(recipe_id, must_exist=False)
        m = self.snapshot().manifests
        return m.filter(pc.equal(m["recipe_id"], rid)).select(["view", "position", "layer", "sample_id"])

    def snapshot(self) -> Snapshot:
        """The set of committed manifests now. Retries if a compaction removes a file mid-read."""
        for _ in range(8):
            files = list_manifests(self._backend)
            try:
                return Snapshot(self, files, _load_all(self._backend, files))
            except FileNotFoundError:
                continue  # a concurrent compact() folded a manifest away: list again
        raise StoreError(f"store {self.url}: manifests kept changing while being read; retry.")

    # -- SQL and loading -------------------------------------------------------------------
    def sql(self, query: str, *, snapshot: Snapshot | None = None) -> pa.Table:
        """Run one read-only SELECT on the sandboxed catalog (DESIGN 4.4); SQLRefusedError else."""
        from l2s_data.store.catalog import Catalog, parse_one

        parse_one(query)  # refuse before paying for a snapshot and a catalog
        with Catalog(self, snapshot=snapshot) as cat:
            return cat.query(query)

    def pairs(self, x: Key, y: Key, *, where: str | None = None, batch_size: int = 64,
              shuffle: bool = True, seed: int = 0, **kwargs: Any):
        """Batches ``(x [B, Dx], y [B, Dy])`` float32 of the samples ``where`` selects.

        See :class:`~l2s_data.store.loader.KeyedDataset` for the other options.
        """
        return self.columns((x, y), where=where, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)

    def columns(self, keys: Sequence[Key], *, where: str | None = None, batch_size: int = 64,
                shuffle: bool = True, seed: int = 0, **kwargs: Any):
        """Batches of any tuple of keyed columns; see :class:`~l2s_data.store.loader.KeyedDataset`."""
        from l2s_data.store.loader import KeyedDataset

        return KeyedDataset(self, keys, where=where, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)


def _load_all(backend: Backend, files: Sequence[str]) -> list[pa.Table]:
    from l2s_data.store.snapshot import _load

    return _load(backend, files)

