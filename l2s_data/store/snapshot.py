"""Snapshots: the committed manifests at one moment, and reads of stored rows by key.

Taking a snapshot lists ``manifests/`` and reads each file's checked header, never its rows:

- a file that a compaction replaced (its name and content are in the compaction's header:
  ``manifests.superseded``) is left out;
- attempts that a tombstone ``deletes`` are left out;
- a shard committed twice (a writer that checked before a compaction folded the shard's first
  commit away, then created the name again) counts once: a compacted file's commit wins over a
  loose file's, then the earliest. A writer checks this rule after its create
  (:func:`commit_of`) and reports ``won`` only when its commit is the one that counts.

What remains is a list of live files and a small set of excluded attempts. Rows are then read
lazily through a pyarrow dataset over those files: the catalog scans it in DuckDB, and a key
lookup is a filtered read whose row-group statistics skip other keys. Nothing materialises
every manifest row. The snapshot's ``id`` hashes the committed (shard, attempt) pairs: it names
exactly the data a training run read, and survives ``compact``.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from l2s_data.errors import KeyNotFoundError, StoreError
from l2s_data.schemas import MANIFESTS
from l2s_data.store._backend import Backend
from l2s_data.store._chunks import ArrayInfo, ChunkCache, ChunkReader, expected_crcs, gather, load_array_info, read_chunk
from l2s_data.store.contract import COMPACTED_PREFIX, TOMBSTONE_PREFIX, manifest_path, to_float32
from l2s_data.store.leases import idle_stamp
from l2s_data.store.manifests import ManifestInfo, check_rows, list_names, read_infos, superseded

__all__ = ["Key", "Snapshot", "take_snapshot", "commit_of", "counting_commit", "part_names"]


@dataclass(frozen=True)
class Key:
    """A stored column: (recipe id or registered name, view, position, layer)."""

    recipe: str
    view: str
    position: str
    layer: int

    def __str__(self) -> str:
        return f"{self.recipe}/{self.view}/{self.position}/L{self.layer}"


def take_snapshot(backend: Backend, resolve: Callable[[str], str],
                  only: Callable[[str], bool] | None = None) -> Snapshot:
    """The committed manifests now (``only``: of the manifest files whose names it accepts)."""
    return Snapshot(backend, _consistent_infos(backend, only), resolve)


def _consistent_infos(backend: Backend, only: Callable[[str], bool] | None,
                      listing: Callable[[], list[str]] | None = None) -> list[ManifestInfo]:
    """The headers of the manifest files listed now (those ``only`` accepts; ``listing``: the
    names to consider, instead of every manifest's).

    A file listed but gone when read is fine if a file that was read supersedes it (a
    compaction committed its replacement first); otherwise the listing is taken again.
    """
    for attempt in range(200):
        names = list_names(backend) if listing is None else listing()
        infos, gone = read_infos(backend, names if only is None else [n for n in names if only(n)])
        if not gone or set(gone) <= {n for i in infos for n in (*i.supersedes, *i.replaces)}:
            return infos
        time.sleep(min(0.05, 0.001 * (attempt + 1)))  # a compaction or delete is mid-way: list again
    raise StoreError(f"store {backend.url}: manifests kept changing while being read; retry.")


#: backend -> (the lease stamp it was listed under, names of its parts and tombstones)
_PARTS: weakref.WeakKeyDictionary[Backend, tuple[tuple[str, ...], list[str]]] = weakref.WeakKeyDictionary()
_PARTS_LOCK = threading.Lock()


def part_names(backend: Backend, *, cached: bool = True) -> list[str]:
    """Names of the compacted parts and tombstones in ``manifests/``.

    Only a maintenance lease holder creates or removes one, so the names listed while no lease
    is held stay right for as long as the lease folder does not change (``leases.idle_stamp``):
    this process then answers from its last listing, after one look at ``leases/``, and never
    lists ``manifests/`` (on a local disk a listing reads every loose manifest's name too)."""
    stamp = idle_stamp(backend)
    if cached and stamp is not None:
        with _PARTS_LOCK:
            hit = _PARTS.get(backend)
        if hit is not None and hit[0] == stamp:
            return list(hit[1])
    names = [f"manifests/{n}" for n in backend.listdir_prefix("manifests", "_")
             if n.startswith((COMPACTED_PREFIX, TOMBSTONE_PREFIX)) and n.endswith(".parquet")]
    if stamp is not None and idle_stamp(backend) == stamp:  # no lease taken while listing
        with _PARTS_LOCK:
            _PARTS[backend] = (stamp, names)
    return list(names)


def commit_of(backend: Backend, shard: str) -> str | None:
    """The attempt whose commit of ``shard`` counts now, or None: the snapshot rules applied to
    the shard's own manifest, the compactions and the tombstones (no other file can commit or
    hide it). Tombstones apply: a deleted shard is not committed.

    It reads those files' headers only (cached), and looks at this one shard: one look for its
    own name, one at ``leases/``, and the parts' names from :func:`part_names`. Its cost does
    not grow with the number of shards or loose manifests in the store."""
    own = manifest_path(shard)
    looks = 0

    def listing() -> list[str]:
        # Only the names that can commit or hide this shard: not one per loose manifest. Its
        # own name first: a compaction creates the part holding it before removing it, so a
        # name gone by then is in a part listed after. A second look lists afresh.
        nonlocal looks
        looks += 1
        mine = [own] if backend.exists(own) else []
        return mine + part_names(backend, cached=looks == 1)

    return counting_commit(_consistent_infos(backend, None, listing), shard)


def counting_commit(infos: Sequence[ManifestInfo], shard: str) -> str | None:
    """The attempt of ``shard`` that counts among ``infos`` (the rule :class:`Snapshot` applies
    to every shard: not superseded, not tombstoned, a compacted commit before a loose one, then
    the earliest), or None."""
    gone = superseded(infos)
    live = [i for i in infos if not gone(i)]
    deleted = {a for i in live for a in i.deletes}
    candidates = [(i.kind != "compacted", i.committed_at.get(shard, ""), i.shards[shard])
                  for i in live if i.is_data and shard in i.shards and i.shards[shard] not in deleted]
    return min(candidates)[2] if candidates else None


class Snapshot:
    """The committed manifests of a store at one moment (see the module docstring)."""

    def __init__(self, backend: Backend, infos: Sequence[ManifestInfo], resolve: Callable[[str], str]):
        self.backend = backend
        self._resolve = resolve
        self._resolved: dict[str, str] = {}
        gone = superseded(infos)
        live = [i for i in infos if not gone(i)]
        deleted = {a for i in live for a in i.deletes}
        #: shard -> (loose?, committed_at, attempt) of the commit that counts
        chosen: dict[str, tuple[bool, str, str]] = {}
        excluded: set[str] = set(deleted)
        for info in sorted((i for i in live if i.is_data), key=lambda i: i.name):
            for shard, attempt in info.shards.items():
                if attempt in deleted:
                    continue
                cand = (info.kind != "compacted", info.committed_at.get(shard, ""), attempt)
                prev = chosen.get(shard)
                if prev is None:
                    chosen[shard] = cand
                elif prev[2] != attempt:  # two attempts committed one shard: see the module docstring
                    win, lose = sorted((prev, cand))
                    chosen[shard] = win
                    excluded.add(lose[2])
        #: every manifest file that was read, and those whose rows count
        self.infos = tuple(infos)
        self.live = tuple(i for i in live if i.is_data and any(chosen.get(s, (0, "", ""))[2] == a for s, a in i.shards.items()))
        self.files = tuple(i.name for i in self.live)
        #: attempts whose rows are hidden (tombstoned, or lost a double commit)
        self.excluded = frozenset(excluded)
        #: shard -> the attempt whose rows are read
        self.shards: dict[str, str] = {s: c[2] for s, c in sorted(chosen.items())}
        #: every (shard, attempt) that counts
        self.attempts: frozenset[tuple[str, str]] = frozenset(self.shards.items())
        self.id = hashlib.sha256("\n".join(f"{s}/{a}" for s, a in sorted(self.attempts)).encode()).hexdigest()[:32]
        #: bytes the commits recorded for their arrays
        self.bytes = sum(i.bytes.get(s, 0) for i in self.live for s, a in i.shards.items() if self.shards.get(s) == a)
        #: committed manifest rows (keys), from the headers
        self.loose_files = sum(1 for i in self.live if i.kind == "shard")
        self._dataset: pads.Dataset | None = None
        self._index: dict[tuple[str, str, str, int], dict[str, tuple[str, int]]] = {}
        self._columns: dict[tuple[str, str, str, int], _Column] = {}
        self._infos: dict[str, ArrayInfo] = {}
        self._array_recipe: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Snapshot(id={self.id!r}, shards={len(self.shards)}, files={len(self.files)})"

    def bytes_of(self, shard: str) -> int:
        """Bytes the commit of ``shard`` recorded for its arrays (0 if not committed)."""
        att = self.shards.get(shard)
        return next((i.bytes.get(shard, 0) for i in self.live if i.shards.get(shard) == att), 0) if att else 0

    # -- rows ------------------------------------------------------------------------------------
    def dataset(self) -> pads.Dataset:
        """A lazily scanned dataset over the live manifest files (filter with :meth:`visible`)."""
        if self._dataset is None:
            self._dataset = pads.dataset([self.backend.path(f) for f in self.files], schema=MANIFESTS,
                                         format="parquet", filesystem=self.backend.fs)
        return self._dataset

    def visible_dataset(self) -> pads.Dataset:
        """:meth:`dataset` with the rows of excluded attempts filtered out (still lazy): what the
        catalog registers, so that no relation a query can name shows a deleted row."""
        return self.dataset().filter(self.visible()) if self.excluded else self.dataset()

    def visible(self) -> pc.Expression:
        """The filter that hides excluded attempts' rows (true when none are excluded)."""
        expr = pc.scalar(True)
        if self.excluded:
            expr = ~pc.field("attempt").isin(pa.array(sorted(self.excluded), pa.string()))
        return expr

    def excluded_table(self) -> pa.Table:
        return pa.table({"attempt": pa.array(sorted(self.excluded), pa.string())})

    def rows(self, where: pc.Expression | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Manifest rows matching ``where`` (a pyarrow expression), locations checked."""
        t = self._scan(lambda ds: ds.to_table(filter=self.visible() if where is None else (self.visible() & where)))
        check_rows(t, f"snapshot {self.id}")
        return t if columns is None else t.select(list(columns))

    def _scan(self, read: Callable[[pads.Dataset], Any]) -> Any:
        """``read(dataset)``, following the files if a compaction removes one meanwhile."""
        for _ in range(8):
            try:
                return read(self.dataset())
            except FileNotFoundError:
                self.follow()  # a compaction folded a file away since this snapshot was taken
        return read(self.dataset())

    def follow(self) -> None:
        """Move to the manifest files that hold this snapshot's rows now (a compaction folds
        files into one and removes them). The rows stay this snapshot's: commits made since are
        hidden. StoreError if one of its attempts is no longer committed (deleted since)."""
        new = take_snapshot(self.backend, self._resolve)
        if not self.attempts <= new.attempts:
            raise StoreError(
                f"snapshot {self.id} of {self.backend.url} can no longer be read: its manifests were "
                f"deleted or replaced since it was taken. Take a new snapshot."
            )
        later = {a for _, a in new.attempts - self.attempts}  # committed since: not this snapshot's
        self.infos, self.live, self.files = new.infos, new.live, new.files
        self.excluded = frozenset(new.excluded | later)
        self._dataset = None

    @property
    def row_count(self) -> int:
        return int(self._scan(lambda ds: ds.count_rows(filter=self.visible())))

    # -- lookup ----------------------------------------------------------------------------------
    def resolve(self, recipe: str) -> str:
        """Recipe id for a registered recipe id or name, looked up once per snapshot (each look
        reads the recipes table; a recipe registered later has no rows in this snapshot)."""
        if recipe not in self._resolved:
            rid = self._resolved[recipe] = self._resolve(recipe)
            self._resolved.setdefault(rid, rid)  # an id resolves to itself
        return self._resolved[recipe]

    def key_rows(self, recipe: str, view: str, position: str, layer: int) -> pa.Table:
        """Manifest rows of one key column (all its samples), sorted by sample id."""
        rid = self.resolve(recipe)
        flt = ((pc.field("recipe_id") == rid) & (pc.field("view") == view)
               & (pc.field("position") == position) & (pc.field("layer") == int(layer)))
        t = self.rows(flt).sort_by("sample_id")
        for path in pc.unique(t["array"]).to_pylist():
            self._array_recipe[path] = rid  # so that errors about its chunks name the recipe
        return t

    def committed_keys(self, recipe: str) -> pa.Table:
        """Columns view, position, layer, sample_id of every committed key of one recipe (an id
        or a registered name): what a rerun need not compute again."""
        return self.rows(pc.field("recipe_id") == self.resolve(recipe), ["view", "position", "layer", "sample_id"])

    def index(self, recipe: str, view: str, position: str, layer: int) -> dict[str, tuple[str, int]]:
        """sample_id -> (array path, row) for one key column."""
        k = (self.resolve(recipe), view, position, int(layer))
        if k not in self._index:
            t = self.key_rows(*k)
            ids = t["sample_id"].to_pylist()
            self._index[k] = dict(zip(ids, zip(t["array"].to_pylist(), t["row"].to_pylist())))
        return self._index[k]

    def array_info(self, path: str, *, recipe_id: str | None = None) -> ArrayInfo:
        if path not in self._infos:
            shard = path.split("/")[1] if path.startswith("shards/") else "?"
            rid = recipe_id or self._array_recipe.get(path, "?")
            self._infos[path] = load_array_info(self.backend, path, shard=shard, recipe_id=rid)
        return self._infos[path]

    def chunk(self, path: str, i: int) -> np.ndarray:
        """Chunk ``i`` of a stored array, stored dtype ``[rows_in_chunk, D]``."""
        return read_chunk(self.backend, self.array_info(path), i)

    # -- reads -----------------------------------------------------------------------------------
    def read(self, recipe_id: str, view: str, position: str, layer: int, sample_ids: Sequence[str]) -> np.ndarray:
        """float32 ``[len(sample_ids), D]``, row i = sample_ids[i]. The loader's reader reads it
        (``_chunks.gather``): each chunk holding a requested row is read once and checked against
        its crc32c and against the crc the manifest's row checksums give, before a row is copied."""
        rid = self.resolve(recipe_id)
        col = self._column(rid, view, position, int(layer))
        missing = [s for s in sample_ids if s not in col.where]
        if missing:
            raise KeyNotFoundError(
                f"{len(missing)} of {len(sample_ids)} sample(s) have no committed row for key "
                f"({recipe_id}, {view}, {position}, layer {layer}) in snapshot {self.id}, e.g. "
                f"{missing[:3]}. Extract them first (`l2s extract`), or query what exists with "
                f"`l2s sql \"SELECT ... FROM manifests\"`."
            )
        if not col.infos:
            return np.zeros((0, 0), np.float32)
        info = col.infos[0]
        loc = np.array([col.where[s] for s in sample_ids], np.int64).reshape(-1, 2)
        out = np.empty((len(loc), info.dim), info.stored_dtype)
        gather(ChunkCache(ChunkReader(self.backend), 1), col.infos, col.expect, loc, out)
        return to_float32(out, info.logical_dtype)

    def _column(self, rid: str, view: str, position: str, layer: int) -> _Column:
        """Where each sample's row of one key lives, and the crcs its chunks must have (cached)."""
        k = (rid, view, position, layer)
        if k not in self._columns:
            t = self.key_rows(*k)
            paths = sorted(set(t["array"].to_pylist()))
            infos = tuple(self.array_info(p, recipe_id=rid) for p in paths)
            if len({(i.dim, i.logical_dtype) for i in infos}) > 1:
                raise StoreError(
                    f"key ({rid}, {view}, {position}, layer {layer}) is stored with different widths "
                    f"or dtypes in {', '.join(f'{i.path} ({i.dim} x {i.logical_dtype})' for i in infos[:4])}; "
                    f"its rows cannot form one column. Delete and re-extract the odd shards."
                )
            at = {p: j for j, p in enumerate(paths)}
            where = {s: (at[a], r) for s, a, r in zip(t["sample_id"].to_pylist(), t["array"].to_pylist(),
                                                     t["row"].to_pylist())}
            self._columns[k] = _Column(where, infos, tuple(expected_crcs(t, infos)))
        return self._columns[k]


@dataclass(frozen=True)
class _Column:
    """One key's rows in a snapshot: sample id -> (array index, row), the arrays, their chunk crcs."""

    where: dict[str, tuple[int, int]]
    infos: tuple[ArrayInfo, ...]
    expect: tuple[np.ndarray, ...]
