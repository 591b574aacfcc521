"""Snapshots: the committed manifests at one moment, and reads of stored rows by key.

A snapshot loads every manifest that exists when it is taken, into memory, so later commits,
compactions or deletions never change what it reads. Its id hashes the set of committed
(shard, attempt) pairs: it names exactly the data a training run read, and stays the same when
``compact`` merely folds manifest files together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from l2s_data.errors import KeyNotFoundError, SchemaMismatchError
from l2s_data.schemas import MANIFESTS
from l2s_data.store._backend import Backend
from l2s_data.store._chunks import ArrayInfo, load_array_info, read_chunk
from l2s_data.store._format import check_exact, to_float32

if TYPE_CHECKING:
    from l2s_data.store.store import Store

__all__ = ["Key", "Snapshot", "read_manifest", "list_manifests", "dedupe_manifests"]

_KEY_COLS = ("recipe_id", "view", "position", "layer", "sample_id")


@dataclass(frozen=True)
class Key:
    """A stored column: (recipe id or registered name, view, position, layer)."""

    recipe: str
    view: str
    position: str
    layer: int

    def __str__(self) -> str:
        return f"{self.recipe}/{self.view}/{self.position}/L{self.layer}"


def list_manifests(backend: Backend) -> list[str]:
    return [f"manifests/{n}" for n in backend.listdir("manifests") if n.endswith(".parquet")]


def read_manifest(backend: Backend, rel: str) -> pa.Table:
    """One manifest file, checked against the pinned MANIFESTS schema (SchemaMismatchError)."""
    import io

    data = backend.read_bytes(rel)
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaMismatchError(
            f"manifest {rel} is not a readable Parquet file ({exc}); it was not written by "
            f"l2s-data. Remove it (the shard is then uncommitted) and rerun extraction."
        ) from exc
    return check_exact(table, MANIFESTS, what=f"manifest {rel}")


def dedupe_manifests(table: pa.Table) -> pa.Table:
    """One row per key, sorted by key; earliest commit wins when a key appears twice."""
    if table.num_rows == 0:
        return table
    con = duckdb.connect()
    try:
        con.register("m", table)
        out = con.sql(
            "SELECT DISTINCT ON (recipe_id, view, position, layer, sample_id) * FROM m "
            "ORDER BY recipe_id, view, position, layer, sample_id, written_at, shard, attempt"
        ).to_arrow_table()
    finally:
        con.close()
    return out.cast(MANIFESTS)


def _load(backend: Backend, files: Sequence[str]) -> list[pa.Table]:
    if len(files) <= 4 or backend.is_local:
        return [read_manifest(backend, f) for f in files]
    with ThreadPoolExecutor(max_workers=16) as pool:  # object stores: hide request latency
        return list(pool.map(lambda f: read_manifest(backend, f), files))


class Snapshot:
    """The committed manifests of a store at the moment :meth:`Store.snapshot` was called."""

    def __init__(self, store: Store, files: Sequence[str], tables: Iterable[pa.Table]):
        self.store = store
        self.files = tuple(files)
        tables = list(tables)
        raw = pa.concat_tables(tables) if tables else MANIFESTS.empty_table()
        pairs = sorted(set(zip(raw.column("shard").to_pylist(), raw.column("attempt").to_pylist())))
        self.id = hashlib.sha256("\n".join(f"{s}/{a}" for s, a in pairs).encode()).hexdigest()[:32]
        #: every (shard, attempt) that some manifest commits
        self.attempts: frozenset[tuple[str, str]] = frozenset(pairs)
        self.manifests = dedupe_manifests(raw)
        #: shard -> the attempt whose rows are read (one per shard, even after a rare double commit)
        self.shards: dict[str, str] = dict(
            sorted(set(zip(self.manifests["shard"].to_pylist(), self.manifests["attempt"].to_pylist())))
        )
        self._recipe_ids = frozenset(pc.unique(self.manifests["recipe_id"]).to_pylist())
        self._index: dict[tuple[str, str, str, int], dict[str, tuple[str, int]]] = {}
        self._infos: dict[str, ArrayInfo] = {}
        self._array_recipe: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"Snapshot(id={self.id!r}, shards={len(self.shards)}, rows={self.manifests.num_rows})"

    @property
    def _backend(self) -> Backend:
        return self.store._backend

    # -- lookup ----------------------------------------------------------------------------
    def resolve(self, recipe: str) -> str:
        """Recipe id for an id with rows here, or a registered recipe id or name."""
        return recipe if recipe in self._recipe_ids else self.store.resolve_recipe(recipe)

    def key_rows(self, recipe: str, view: str, position: str, layer: int) -> pa.Table:
        """Manifest rows of one key column (all its samples), sorted by sample id."""
        rid = self.resolve(recipe)
        m = self.manifests
        mask = pc.and_(
            pc.and_(pc.equal(m["recipe_id"], rid), pc.equal(m["view"], view)),
            pc.and_(pc.equal(m["position"], position), pc.equal(m["layer"], int(layer))),
        )
        return m.filter(mask)

    def index(self, recipe: str, view: str, position: str, layer: int) -> dict[str, tuple[str, int]]:
        """sample_id -> (array path, row) for one key column."""
        rid = self.resolve(recipe)
        k = (rid, view, position, int(layer))
        if k not in self._index:
            t = self.key_rows(rid, view, position, layer)
            self._index[k] = dict(
                zip(t["sample_id"].to_pylist(), zip(t["array"].to_pylist(), t["row"].to_pylist()))
            )
        return self._index[k]

    def array_info(self, path: str) -> ArrayInfo:
        if path not in self._infos:
            if self._array_recipe is None:
                pairs = self.manifests.group_by(["array", "recipe_id"]).aggregate([])
                self._array_recipe = dict(zip(pairs["array"].to_pylist(), pairs["recipe_id"].to_pylist()))
            shard = path.split("/")[1] if path.startswith("shards/") else "?"
            rid = self._array_recipe.get(path, "?")
            self._infos[path] = load_array_info(self._backend, path, shard=shard, recipe_id=rid)
        return self._infos[path]

    def chunk(self, path: str, i: int) -> np.ndarray:
        """Chunk ``i`` of a stored array, stored dtype ``[rows_in_chunk, D]``."""
        return read_chunk(self._backend, self.array_info(path), i)

    # -- reads -----------------------------------------------------------------------------
    def read(self, recipe_id: str, view: str, position: str, layer: int,
             sample_ids: Sequence[str]) -> np.ndarray:
        """float32 ``[len(sample_ids), D]``, row i = sample_ids[i]; whole chunks are read."""
        idx = self.index(recipe_id, view, position, layer)
        missing = [s for s in sample_ids if s not in idx]
        if missing:
            raise KeyNotFoundError(
                f"{len(missing)} of {len(sample_ids)} sample(s) have no committed row for key "
                f"({recipe_id}, {view}, {position}, layer {layer}) in snapshot {self.id}, e.g. "
                f"{missing[:3]}. Extract them first (`l2s extract`), or query what exists with "
                f"`l2s sql \"SELECT ... FROM manifests\"`."
            )
        locs = [idx[s] for s in sample_ids]
        if not locs:
            dim = self.key_rows(recipe_id, view, position, layer)["dim"]
            return np.zeros((0, int(dim[0].as_py()) if len(dim) else 0), np.float32)
        out: np.ndarray | None = None
        by_chunk: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for j, (path, row) in enumerate(locs):
            info = self.array_info(path)
            by_chunk.setdefault((path, row // info.chunk_rows), []).append((j, row % info.chunk_rows))
        for (path, c), items in by_chunk.items():
            info = self.array_info(path)
            block = self.chunk(path, c)
            if out is None:
                out = np.empty((len(locs), info.dim), np.float32)
            dst = np.fromiter((j for j, _ in items), np.int64, len(items))
            src = np.fromiter((r for _, r in items), np.int64, len(items))
            out[dst] = to_float32(block[src], info.logical_dtype)
        assert out is not None  # locs is non-empty
        return out
