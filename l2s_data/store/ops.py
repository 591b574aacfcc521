"""Maintenance of a store: info, verify, gc, delete and migrate (``l2s store ...``; compaction
is in ``compaction``).

Each takes the store's parts explicitly (backend, tables, and a function that takes a fresh
snapshot); ``Store.admin`` (``admin.Admin``) exposes them. compact, delete and gc hold the store's
maintenance lease (``leases``), so two of them never interleave, and each is safe alongside
running writers and readers:

- **compact** commits the folded file (which names the files it ``supersedes``) before it
  removes any of them, so every reader sees each key at every moment;
- **delete** commits a tombstone (a manifest that ``deletes`` the recipe's attempts) before it
  removes a file, so no compaction can bring the rows back, and rows committed meanwhile by a
  running extraction keep their recipe (the writer registers it again after its commit);
- **gc** removes an attempt folder only after creating its ``claim`` file, which a writer
  creates too before it commits: exactly one of them wins (see ``writer``).

What maintenance removes is only what the store wrote: see ``attempts``. Anything else is
reported and kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from l2s_data.errors import CorruptManifestError, ReferencedRecipeError, StoreError
from l2s_data.schemas import FORMAT_VERSION, MANIFESTS, ZARR_ATTRIBUTES_KEY
from l2s_data.store._backend import Backend
from l2s_data.store._chunks import load_array_info, read_chunk
from l2s_data.store.attempts import (
    attempt_files, files_bytes, list_attempts, recorded_age_s, remove_attempt, scan_shards,
)
from l2s_data.store.contract import MARKER, PART_TABLES, attempt_dir, check_exact, crc32c, now, sha256_hex
from l2s_data.store.leases import Lease
from l2s_data.store.manifests import (
    check_rows, concat_rows, drop_attempts, encode_manifest, list_names, manifest_name, order_by, read_info,
    read_rows,
)
from l2s_data.store.snapshot import Snapshot, commit_of
from l2s_data.store.tables import Tables

__all__ = ["StoreInfo", "Problem", "GcResult", "DeleteResult", "info", "verify", "gc", "delete_recipe",
           "migrate", "list_attempts", "scan_shards"]

Take = Callable[[], Snapshot]


@dataclass(frozen=True)
class StoreInfo:
    url: str
    snapshot_id: str
    recipes: pa.Table          # recipe_id, name, keys, rows, shards
    rows: int                  # committed manifest rows (keys)
    bytes: int                 # bytes the commits recorded for their arrays
    committed_shards: int
    manifest_files: int
    orphans: list[str]         # attempt folders that no manifest commits
    orphan_bytes: int
    unrecognised: list[str] = field(default_factory=list)  # "path: why", never touched


@dataclass(frozen=True)
class Problem:
    shard: str
    recipe_id: str
    what: str                  # file or array concerned
    message: str


def info(backend: Backend, take: Take, recipes_sql: Callable[[Snapshot], pa.Table]) -> StoreInfo:
    attempts, odd = scan_shards(backend)  # before the snapshot: a commit in between is not an orphan
    snap = take()
    orphans = [attempt_dir(s, a) for s, a in attempts if (s, a) not in snap.attempts]
    recipes = recipes_sql(snap)
    return StoreInfo(
        url=backend.url, snapshot_id=snap.id, recipes=recipes,
        rows=int(pc.sum(recipes["rows"]).as_py() or 0) if recipes.num_rows else 0,
        bytes=snap.bytes, committed_shards=len(snap.shards), manifest_files=len(snap.files),
        orphans=orphans, orphan_bytes=sum(backend.du(o) for o in orphans), unrecognised=odd,
    )


def verify(backend: Backend, take: Take, *, progress=None) -> list[Problem]:
    """Check every committed row: the manifests' checksums and paths, each array's ``zarr.json``
    attributes against its rows (shard, attempt, recipe, view, position, layer, sample-ids
    hash), shapes, and every chunk's and row's checksum. Returns the problems ([] = intact).
    ``progress(n_done, n_total)`` is called after each array when given."""
    problems: list[Problem] = []
    for name in list_names(backend):
        try:
            read_info(backend, name)
        except CorruptManifestError as exc:
            problems.append(Problem("?", "?", name, str(exc)))
        except FileNotFoundError:
            continue
    snap = take() if not problems else None
    if snap is None:
        return problems  # a corrupt manifest: nothing else can be trusted to be complete
    tables = []
    for i in snap.live:
        try:
            tables.append(drop_attempts(read_rows(backend, i, dictionary=True), snap.excluded))
        except CorruptManifestError as exc:
            problems.append(Problem("?", "?", i.name, str(exc)))
    m = concat_rows(tables)
    # One sort by (array, row), then each array's rows are a run of it.
    if not m.num_rows:
        return problems
    m = m.unify_dictionaries().take(order_by(m, ("array", "row"))).combine_chunks()  # slices are free
    paths = m["array"].chunk(0)
    codes = paths.indices.to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    bounds = np.r_[starts, len(codes)].tolist()
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        problems += _verify_array(backend, paths.dictionary[int(codes[lo])].as_py(), m.slice(lo, hi - lo))
        if progress is not None:
            progress(k + 1, len(starts))
    return problems


def _verify_array(backend: Backend, path: str, rows: pa.Table) -> list[Problem]:
    first = {c: rows[c][0].as_py() for c in ("shard", "attempt", "recipe_id", "view", "position", "layer")}
    shard, rid = first["shard"], first["recipe_id"]
    try:
        info_ = load_array_info(backend, path, shard=shard, recipe_id=rid)
        meta = json.loads(backend.read_bytes(f"{path}/zarr.json"))
        attrs = meta.get("attributes", {}).get(ZARR_ATTRIBUTES_KEY, {})
    except (StoreError, ValueError, FileNotFoundError) as exc:
        return [Problem(shard, rid, path, str(exc))]
    out: list[Problem] = []
    ids_hash = hashlib.sha256("\n".join(rows["sample_id"].to_pylist()).encode()).hexdigest()
    want = dict(first, sample_ids_sha256=ids_hash)
    if rows["row"].to_pylist() != list(range(rows.num_rows)):
        want["sample_ids_sha256"] = attrs.get("sample_ids_sha256")  # a partial view: rows were hidden
    wrong = {k: (attrs.get(k), v) for k, v in want.items() if attrs.get(k) != v}
    if wrong:
        out.append(Problem(shard, rid, f"{path}/zarr.json", (
            f"zarr.json attributes disagree with the manifest rows: "
            + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in sorted(wrong.items()))
            + "; the manifest or the array was altered. Re-extract the shard."
        )))
    dims, dtypes = set(rows["dim"].to_pylist()), set(rows["dtype"].to_pylist())
    top = max(rows["row"].to_pylist())
    if dims != {info_.dim} or dtypes != {info_.logical_dtype} or top >= info_.rows:
        out.append(Problem(shard, rid, path, (
            f"zarr.json says [{info_.rows}, {info_.dim}] {info_.logical_dtype}, the manifest "
            f"says D={sorted(dims)} {sorted(dtypes)} up to row {top}."
        )))
        return out
    sums = dict(zip(rows["row"].to_pylist(), rows["checksum"].to_pylist()))
    for c in range(info_.n_chunks):
        try:
            block = read_chunk(backend, info_, c)
        except StoreError as exc:  # CorruptChunkError, OutsideStoreError
            out.append(Problem(shard, rid, f"{path}/c/{c}/0", str(exc)))
            continue
        base = c * info_.chunk_rows
        for i in range(block.shape[0]):
            expect = sums.get(base + i)
            if expect is not None and f"{crc32c(block[i]):08x}" != expect:
                out.append(Problem(shard, rid, f"{path}/c/{c}/0", (
                    f"row {base + i} of shard {shard} (recipe {rid}) does not match its manifest "
                    f"checksum; re-extract the shard."
                )))
    return out


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)
    bytes: int = 0
    kept_recent: list[str] = field(default_factory=list)
    #: "path: why" of every entry gc does not recognise as the store's; never removed
    kept_unknown: list[str] = field(default_factory=list)


def gc(backend: Backend, take: Take, *, grace_s: float = 3600.0, dry_run: bool = False) -> GcResult:
    """Remove attempts that no valid manifest commits, and stale temporaries.

    Stops on a corrupt manifest (its attempts cannot be told from orphans). Only what the writer
    makes is removed (see the module docstring); anything else is reported in ``kept_unknown``.
    An attempt at a shard another attempt committed lost its race and goes at once; an attempt
    at a shard nobody committed may be a writer at work, so it goes only once its recorded start
    (``attempt.json``) is ``grace_s`` old, and one without that record is kept. Before removing
    a folder gc claims it (see the module docstring), so a writer finishing at that moment
    either commits first (and gc keeps it) or finds its attempt gone and commits nothing.
    """
    with Lease(backend, op="gc"):
        attempts, odd = scan_shards(backend)  # list first: an attempt that commits meanwhile is kept
        snap = take()  # CorruptManifestError stops gc here
        out = GcResult(kept_unknown=list(odd))
        for s, a in attempts:
            if (s, a) in snap.attempts:
                continue
            d = attempt_dir(s, a)
            files, dirs, why = attempt_files(backend, s, a)
            if why is not None:
                out.kept_unknown.append(f"{d}: {why}")
                continue
            remnant = f"{d}/attempt.json" not in files  # what a stopped removal left
            if remnant and dirs == [d] and not files:
                # An empty folder: a writer that has not written its record yet, or a removal
                # that stopped just before its last step; the folder's own time tells them apart.
                age = backend.age_s(d)
                if age is None or age < grace_s:
                    out.kept_recent.append(d)
                    continue
            elif s not in snap.shards and not remnant:
                age = recorded_age_s(backend, f"{d}/attempt.json", "started_at")
                if age is None or age < grace_s:
                    out.kept_recent.append(d)
                    continue
            # A shard another attempt committed: this one lost, or will lose, its commit (gc
            # holds the lease, so no delete can uncommit the shard meanwhile). At a shard nobody
            # committed, claim the folder first: a writer finishing now either claimed it already
            # (and is committing) or will find the claim taken and commit nothing.
            if not dry_run and s not in snap.shards and not remnant:
                mine = json.dumps({"by": "gc", "at": now().isoformat()}).encode()
                if not backend.put_if_absent(f"{d}/claim", mine):
                    claim = f"{d}/claim"
                    try:
                        by_gc = json.loads(backend.read_bytes(claim)).get("by") == "gc"
                    except (FileNotFoundError, ValueError, AttributeError, StoreError):
                        by_gc = False
                    # A writer claimed it: it is committing now, unless it died after claiming.
                    if not by_gc:
                        age = recorded_age_s(backend, claim, "at")
                        if commit_of(backend, s) == a or age is None or age < grace_s:
                            out.kept_recent.append(d)
                            continue
                files, dirs, why = attempt_files(backend, s, a)  # the claim is in it now
                if why is not None:
                    out.kept_unknown.append(f"{d}: {why}")
                    continue
            out.bytes += files_bytes(backend, files)
            out.removed.append(d)
            if not dry_run:
                remove_attempt(backend, files, dirs)
        for folder in ("manifests", "leases", *PART_TABLES):
            for tmp in backend.stale_temporaries(folder, grace_s):
                out.removed.append(tmp)
                if not dry_run:
                    backend.remove(tmp)
        if not dry_run:
            for s in sorted({s for s, _ in attempts}):
                if not backend.entries(f"shards/{s}"):
                    backend.remove_dir(f"shards/{s}")
        return out


@dataclass
class DeleteResult:
    recipe_id: str
    rows: int = 0
    shards: list[str] = field(default_factory=list)
    bytes: int = 0
    #: "path: why" of attempt folders left in place (they hold something the writer does not make)
    kept_unknown: list[str] = field(default_factory=list)


def delete_recipe(backend: Backend, tables: Tables, take: Take, recipe: str, *, force: bool = False) -> DeleteResult:
    """Uncommit and remove every row of a recipe; refused while runs reference it unless ``force``."""
    rid = tables.resolve_recipe(recipe)
    runs = tables.read("runs")
    users = [r for r, ids in zip(runs["run_id"].to_pylist(), runs["recipe_ids"].to_pylist()) if rid in (ids or [])]
    if users and not force:
        raise ReferencedRecipeError(
            f"recipe {rid} is referenced by {len(users)} run(s), e.g. {users[:3]}; their results "
            f"would lose their inputs. Delete those runs first, or pass --force."
        )
    with Lease(backend, op="delete"):
        snap = take()
        mine = snap.rows(pc.field("recipe_id") == rid, ["shard", "attempt"])
        pairs = sorted(set(zip(mine["shard"].to_pylist(), mine["attempt"].to_pylist())))
        out = DeleteResult(rid, rows=mine.num_rows, shards=[s for s, _ in pairs])
        if pairs:
            attempts = [a for _, a in pairs]
            tomb = manifest_name("tombstone", sha256_hex("\n".join(attempts)))
            backend.put_if_absent(tomb, encode_manifest(concat_rows([]), kind="tombstone", shards={},
                                                        deletes=attempts))
        # The tombstone is committed: the files below are now unreachable, remove them.
        gone = {a for _, a in pairs}
        for i in snap.live:
            if i.kind == "shard" and set(i.shards.values()) <= gone:
                backend.remove(i.name)
        for s, a in pairs:
            d = attempt_dir(s, a)
            out.bytes += snap.bytes_of(s)
            try:
                files, dirs, why = attempt_files(backend, s, a)
            except StoreError as exc:  # the shard folder is a link: never followed
                files, dirs, why = [], [], str(exc)
            if why is not None:
                out.kept_unknown.append(f"{d}: {why}")
                continue
            remove_attempt(backend, files, dirs)
            if not backend.entries(f"shards/{s}"):
                backend.remove_dir(f"shards/{s}")
        if take().rows(pc.field("recipe_id") == rid, ["shard"]).num_rows == 0:
            for part in tables.recipe_parts(rid):
                backend.remove(part)
        return out


def migrate(backend: Backend) -> int:
    """Upgrade a format-1 store in place: its manifests (plain Parquet, no header) are folded
    into one checked, compacted manifest; arrays, tables and recipe ids do not change (format 2
    keeps their bytes). Returns the number of format-1 manifests folded. Safe to rerun."""
    marker = json.loads(backend.read_bytes(MARKER))
    if int(marker.get("format_version", -1)) == FORMAT_VERSION:
        return 0
    if int(marker.get("format_version", -1)) != 1:
        raise StoreError(f"store {backend.url}: cannot migrate format version {marker.get('format_version')!r}.")
    with Lease(backend, op="migrate"):
        old, tables = [], []
        for name in list_names(backend):
            try:
                read_info(backend, name)
                continue  # already format 2 (a rerun after a crash)
            except CorruptManifestError:
                pass
            t = check_exact(pq.read_table(pa.BufferReader(backend.read_bytes(name))), MANIFESTS, what=name)
            tables.append(check_rows(t, name))
            old.append(name)
        if tables:
            rows = concat_rows(tables).sort_by([("written_at", "ascending"), ("attempt", "ascending")])
            first: dict[str, str] = {}
            for s, a in zip(rows["shard"].to_pylist(), rows["attempt"].to_pylist()):
                first.setdefault(s, a)  # the earliest commit of a shard wins, as format 1 read it
            keep = pc.is_in(rows["attempt"], value_set=pa.array(sorted(set(first.values()))))
            rows = rows.filter(keep).sort_by([(c, "ascending") for c in ("recipe_id", "view", "position", "layer", "sample_id")])
            stamps = {s: t.isoformat() for s, t in zip(rows["shard"].to_pylist(), rows["written_at"].to_pylist())}
            data = encode_manifest(rows, kind="compacted", shards=first, committed_at=stamps,
                                   bytes_={s: backend.du(attempt_dir(s, a)) for s, a in first.items()})
            backend.put_if_absent(manifest_name("compacted", sha256_hex("\n".join(sorted(old)))), data)
            for name in old:
                backend.remove(name)
        marker["format_version"] = FORMAT_VERSION
        marker["migrated_at"] = now().isoformat()
        backend.write_bytes(MARKER, json.dumps(marker, indent=1).encode())
        return len(old)
