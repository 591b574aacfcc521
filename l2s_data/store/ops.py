"""Maintenance of a store: info, verify, gc, compact and delete (``l2s store ...``).

All of them keep the commit protocol's promise to concurrent readers: a file a snapshot may
still need is removed only after its replacement is committed, and a snapshot that finds a
manifest gone mid-read simply lists again.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import google_crc32c
import pyarrow as pa
import pyarrow.compute as pc

from l2s_data.errors import CorruptChunkError, ReferencedRecipeError, SchemaMismatchError, StoreError
from l2s_data.schemas import MANIFESTS
from l2s_data.store._chunks import load_array_info, read_chunk
from l2s_data.store._format import COMPACTED_PREFIX, attempt_dir, parquet_bytes, sha256_hex
from l2s_data.store.snapshot import list_manifests, read_manifest

if TYPE_CHECKING:
    from l2s_data.store.store import Store

__all__ = ["StoreInfo", "Problem", "info", "verify", "gc", "compact", "delete_recipe", "list_attempts"]


@dataclass(frozen=True)
class StoreInfo:
    url: str
    snapshot_id: str
    recipes: pa.Table          # recipe_id, name, keys, rows
    rows: int                  # committed manifest rows (keys)
    bytes: int                 # bytes under shards/ (committed and orphaned)
    committed_shards: int
    manifest_files: int
    orphans: list[str]         # attempt folders that no manifest commits
    orphan_bytes: int


@dataclass(frozen=True)
class Problem:
    shard: str
    recipe_id: str
    what: str                  # file or array concerned
    message: str


def list_attempts(store: Store) -> list[tuple[str, str]]:
    """Every (shard, attempt) folder under shards/."""
    b = store._backend
    return [(s, a) for s in b.listdir("shards") for a in b.listdir(f"shards/{s}")]


def _attempt_age_s(store: Store, shard: str, attempt: str) -> float:
    try:
        meta = json.loads(store._backend.read_bytes(f"{attempt_dir(shard, attempt)}/attempt.json"))
        started = _dt.datetime.fromisoformat(meta["started_at"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return float("inf")  # no readable marker: not a live writer's folder
    return (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds()


def info(store: Store) -> StoreInfo:
    attempts = list_attempts(store)  # before the snapshot: a commit in between is not an orphan
    snap = store.snapshot()
    orphans = [attempt_dir(s, a) for s, a in attempts if (s, a) not in snap.attempts]
    recipes = store.sql(
        "SELECT m.recipe_id, any_value(r.name) AS name, "
        "count(DISTINCT (m.view, m.position, m.layer)) AS keys, count(*) AS rows, "
        "count(DISTINCT m.shard) AS shards "
        "FROM manifests m LEFT JOIN recipes r USING (recipe_id) GROUP BY m.recipe_id ORDER BY m.recipe_id"
    )
    return StoreInfo(
        url=store.url, snapshot_id=snap.id, recipes=recipes, rows=snap.manifests.num_rows,
        bytes=store._backend.du("shards"), committed_shards=len(snap.shards),
        manifest_files=len(snap.files), orphans=orphans,
        orphan_bytes=sum(store._backend.du(o) for o in orphans),
    )


def verify(store: Store, *, progress=None) -> list[Problem]:
    """Check every committed row against its manifest: files, shapes, chunk and row checksums.

    Returns the problems found ([] = the store is intact). ``progress(n_done, n_total)`` is
    called after each array when given.
    """
    problems: list[Problem] = []
    b = store._backend
    tables = []
    for f in list_manifests(b):
        try:
            tables.append(read_manifest(b, f))
        except SchemaMismatchError as exc:
            problems.append(Problem("?", "?", f, str(exc)))
        except FileNotFoundError:
            continue
    if not tables:
        return problems
    m = pa.concat_tables(tables)
    arrays = sorted(set(m["array"].to_pylist()))
    for k, path in enumerate(arrays):
        rows = m.filter(pc.equal(m["array"], path))
        shard, rid = rows["shard"][0].as_py(), rows["recipe_id"][0].as_py()
        try:
            info_ = load_array_info(b, path, shard=shard, recipe_id=rid)
        except StoreError as exc:
            problems.append(Problem(shard, rid, path, str(exc)))
            continue
        dims = set(rows["dim"].to_pylist())
        dtypes = set(rows["dtype"].to_pylist())
        if dims != {info_.dim} or dtypes != {info_.logical_dtype} or max(rows["row"].to_pylist()) >= info_.rows:
            problems.append(Problem(shard, rid, path, (
                f"zarr.json says [{info_.rows}, {info_.dim}] {info_.logical_dtype}, the manifest "
                f"says D={sorted(dims)} {sorted(dtypes)} up to row {max(rows['row'].to_pylist())}."
            )))
            continue
        want = dict(zip(rows["row"].to_pylist(), rows["checksum"].to_pylist()))
        for c in range(info_.n_chunks):
            try:
                block = read_chunk(b, info_, c)
            except CorruptChunkError as exc:
                problems.append(Problem(shard, rid, f"{path}/c/{c}/0", str(exc)))
                continue
            base = c * info_.chunk_rows
            for i in range(block.shape[0]):
                expect = want.get(base + i)
                if expect is not None and f"{google_crc32c.value(block[i].tobytes()):08x}" != expect:
                    problems.append(Problem(shard, rid, f"{path}/c/{c}/0", (
                        f"row {base + i} of shard {shard} (recipe {rid}) does not match its manifest "
                        f"checksum; re-extract the shard."
                    )))
        if progress is not None:
            progress(k + 1, len(arrays))
    return problems


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)
    bytes: int = 0
    kept_recent: list[str] = field(default_factory=list)


def gc(store: Store, *, grace_s: float = 3600.0, dry_run: bool = False) -> GcResult:
    """Remove attempts that no manifest commits.

    An attempt at a shard that another attempt committed lost its race and goes at once. An
    attempt at a shard nobody committed may be a writer still at work, so it goes only once
    it is ``grace_s`` seconds old (by its ``attempt.json``).
    """
    attempts = list_attempts(store)  # list first: an attempt that commits meanwhile is kept
    snap = store.snapshot()
    out = GcResult()
    for s, a in attempts:
        if (s, a) in snap.attempts:
            continue
        d = attempt_dir(s, a)
        if s not in snap.shards and _attempt_age_s(store, s, a) < grace_s:
            out.kept_recent.append(d)
            continue
        out.bytes += store._backend.du(d)
        out.removed.append(d)
        if not dry_run:
            store._backend.remove(d, recursive=True)
    # A process killed inside put_if_absent can leave its private temporary file behind.
    for folder in ("manifests", "recipes", "samples", "memberships", "errors", "runs", "evaluations", "extractions"):
        for tmp in store._backend.stale_temporaries(folder, grace_s):
            out.removed.append(tmp)
            if not dry_run:
                store._backend.remove(tmp)
    if not dry_run:
        for s in {s for s, _ in attempts}:
            if not store._backend.listdir(f"shards/{s}"):
                store._backend.remove(f"shards/{s}", recursive=True)
    return out


def compact(store: Store, *, min_files: int = 2) -> tuple[int, str | None]:
    """Fold every manifest file into one ``_compacted-<hash>.parquet``; returns (folded, name).

    The folded file is committed (create-if-absent) before any source is removed, so every
    reader sees each key at every moment; the snapshot id does not change.
    """
    for _ in range(5):
        files = list_manifests(store._backend)
        if len(files) < min_files:
            return 0, None
        try:
            tables = [read_manifest(store._backend, f) for f in files]
        except FileNotFoundError:
            continue  # another compaction or delete is at work: list again
        merged = pa.concat_tables(tables).sort_by(
            [("shard", "ascending"), ("array", "ascending"), ("row", "ascending")]
        )
        name = f"manifests/{COMPACTED_PREFIX}{sha256_hex(chr(10).join(files))}.parquet"
        store._backend.put_if_absent(name, parquet_bytes(merged.cast(MANIFESTS)))
        for f in files:
            if f != name:
                store._backend.remove(f)
        return len(files), name
    raise StoreError(f"store {store.url}: manifests kept changing during compact; retry.")


@dataclass
class DeleteResult:
    recipe_id: str
    rows: int = 0
    shards: list[str] = field(default_factory=list)
    bytes: int = 0


def delete_recipe(store: Store, recipe: str, *, force: bool = False) -> DeleteResult:
    """Uncommit and remove every row of a recipe; refused while runs reference it unless ``force``."""
    rid = store.resolve_recipe(recipe)
    runs = store.table("runs")
    users = [r for r, ids in zip(runs["run_id"].to_pylist(), runs["recipe_ids"].to_pylist()) if rid in (ids or [])]
    if users and not force:
        raise ReferencedRecipeError(
            f"recipe {rid} is referenced by {len(users)} run(s), e.g. {users[:3]}; their results "
            f"would lose their inputs. Delete those runs first, or pass --force."
        )
    out = DeleteResult(rid)
    b = store._backend
    for f in list_manifests(b):
        t = read_manifest(b, f)
        mine = pc.equal(t["recipe_id"], rid)
        n = int(pc.sum(mine).as_py() or 0)
        if n == 0:
            continue
        out.rows += n
        out.shards += sorted(set(t.filter(mine)["shard"].to_pylist()))
        rest = t.filter(pc.invert(mine))
        if rest.num_rows:
            # Commit the remainder before removing the original, so other recipes never vanish.
            b.put_if_absent(f"manifests/{COMPACTED_PREFIX}{sha256_hex(f + rid)}.parquet", parquet_bytes(rest))
        b.remove(f)
    for s in sorted(set(out.shards)):
        out.bytes += b.du(f"shards/{s}")
        b.remove(f"shards/{s}", recursive=True)
    for part in b.listdir("recipes"):
        if part.startswith(rid):
            b.remove(f"recipes/{part}")
    store._recipes = None
    store._compacted.clear()
    return out

