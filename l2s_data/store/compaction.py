"""Compaction: folding manifest files into sorted parts, by size tier, off the commit path.

A commit creates one manifest file, ``manifests/<shard>.parquet``, and nothing else. Left alone,
loose files pile up and every snapshot reads one header per file, so they are folded into
*parts* (``manifests/_compacted-<hash>.parquet``, rows sorted by key):

- :func:`step` is the bounded step: once more than ``LOOSE_FILES`` loose files are live, it
  folds exactly those loose files into one new part (never the parts already written), then, if
  ``FANOUT`` parts of one size tier exist and together hold at most ``STEP_ROWS`` rows, merges
  them into one (and so on up the tiers, a few merges at most). Its cost depends on those limits, not on the size of the store: a part of
  ``STEP_ROWS`` rows is never read again by a step. A writer runs it after its commit
  (``Store.shard_writer``), once its ``won`` is settled, on its process's first commit and then
  once every ``LOOSE_FILES // LOOK_SHARE`` commits (:func:`due`), since counting the loose files
  lists the folder; it skips when another process holds the maintenance lease.
- :func:`compact` (``l2s store compact``, ``Store.maintain()``) folds every live file and
  tombstone into one part: what an extraction run does at its end, or a cron job.

Both keep the protocol's invariants (see ``README.md``): a part is created before any file it
folds is removed; it records by name and sha256 (``replaces``) each file it folds and each file
an earlier, interrupted compaction replaced, and removes exactly those, so a crash between two
removals leaves every remaining one superseded by the new part itself; it carries
only the commit that counts of each shard (the rows of deleted and losing attempts are dropped),
with its original ``committed_at``, so the same commit keeps counting; a step never folds a
tombstone, which thus keeps hiding rows in parts it did not rewrite. Only a lease holder
removes a manifest, so a name it read still holds what it read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from l2s_data.errors import LeaseHeldError, StoreError
from l2s_data.store._backend import Backend
from l2s_data.store.contract import sha256_hex
from l2s_data.store.leases import Lease
from l2s_data.store.manifests import (
    KEY_ORDER, ManifestInfo, concat_rows, drop_attempts, encode_manifest, manifest_name, order_by,
    read_info, read_rows, superseded,
)
from l2s_data.store.snapshot import Snapshot

__all__ = ["compact", "step", "due", "LOOSE_FILES", "LOOK_SHARE", "FANOUT", "STEP_ROWS"]

#: Loose (one-shard) manifest files after which a step folds them into one part.
LOOSE_FILES = 256
#: Parts of one size tier (rows within a factor ``FANOUT``) that a step merges into one.
FANOUT = 8
#: The most rows one step writes: larger parts are merged only by :func:`compact`.
STEP_ROWS = 4_000_000

#: A process looks at the number of loose files on its first commit and then once every
#: ``LOOSE_FILES // LOOK_SHARE`` commits (every commit when that is below 1): counting them
#: lists ``manifests/``, which on a local disk reads every loose file's name.
LOOK_SHARE = 16

#: Merges one step may make, one tier after another.
_MAX_MERGES = 8

Take = Callable[[], Snapshot]


def compact(backend: Backend, take: Take, *, min_files: int = 2) -> tuple[int, str | None]:
    """Fold every live manifest and tombstone into one part; returns (files folded, new name).
    Rows of deleted or losing attempts are dropped; the snapshot id does not change."""
    with Lease(backend, op="compact"):
        snap = take()
        gone = superseded(snap.infos)
        folded = [i for i in snap.infos if not gone(i)]
        if len(folded) < min_files:
            return 0, None
        return len(folded), _fold(backend, snap, folded)


def due(commits: int) -> bool:
    """Whether a process's commit number ``commits`` (0, 1, ...) runs a :func:`step`."""
    return commits % max(1, LOOSE_FILES // LOOK_SHARE) == 0


def step(backend: Backend, take: Take, *, loose_files: int | None = None, fanout: int | None = None,
         step_rows: int | None = None) -> int:
    """One bounded compaction step (see the module docstring); returns the files it folded (0
    when there was nothing to do or the lease was held). Without more than ``loose_files``
    loose files it only lists the manifest names."""
    loose_files = LOOSE_FILES if loose_files is None else loose_files
    fanout = FANOUT if fanout is None else fanout
    step_rows = STEP_ROWS if step_rows is None else step_rows
    loose = sum(1 for n in backend.listdir_prefix("manifests", "") if n.endswith(".parquet") and n[0] not in "_.")
    if loose <= loose_files:
        return 0
    try:
        with Lease(backend, op="auto-compact"):
            snap = take()
            gone = superseded(snap.infos)
            loose = [i for i in snap.infos if i.kind == "shard" and not gone(i)]
            folded = 0
            if len(loose) > loose_files:
                _fold(backend, snap, loose)
                folded += len(loose)
                snap = take()
            # Merging one tier can fill the next: at most one merge per tier, each of at most
            # ``step_rows`` rows.
            for _ in range(_MAX_MERGES):
                merge = _tier_to_merge(snap, fanout, step_rows)
                if not merge:
                    break
                _fold(backend, snap, merge)
                folded += len(merge)
                snap = take()
            return folded
    except LeaseHeldError:
        return 0


def _tier_to_merge(snap: Snapshot, fanout: int, step_rows: int) -> list[ManifestInfo]:
    """The ``fanout`` smallest parts of the lowest size tier that has that many, if together
    they hold at most ``step_rows`` rows; else none."""
    gone = superseded(snap.infos)
    parts = sorted((i for i in snap.infos if i.kind == "compacted" and not gone(i)), key=lambda i: (i.rows, i.name))
    tiers: dict[int, list[ManifestInfo]] = {}
    for p in parts:
        tiers.setdefault(int(math.log(max(p.rows, 1), fanout)), []).append(p)
    for _, members in sorted(tiers.items()):
        if len(members) >= fanout:
            pick = members[:fanout]
            return pick if sum(p.rows for p in pick) <= step_rows else []
    return []


def _fold(backend: Backend, snap: Snapshot, folded: Sequence[ManifestInfo]) -> str:
    """Create one part holding the counting rows of ``folded`` (files of ``snap``), then remove
    every file of ``snap`` that is folded or already superseded (the files the part replaces).
    Returns the part's name."""
    names = {i.name for i in folded}
    live = [i for i in snap.live if i.name in names]
    # Held as dictionaries and written in key order a row group at a time: the rows in memory
    # once, at about 80 bytes a row (3M rows: 0.9 GB peak RSS, against 2.7 GB as strings).
    rows = drop_attempts(concat_rows(read_rows(backend, i, dictionary=True) for i in live), snap.excluded)

    def counts(i: ManifestInfo, s: str) -> bool:
        return snap.shards.get(s) == i.shards.get(s)

    shards = {s: a for i in live for s, a in i.shards.items() if counts(i, s)}
    stamps = {s: t for i in live for s, t in i.committed_at.items() if counts(i, s)}
    byts = {s: b for i in live for s, b in i.bytes.items() if counts(i, s)}
    # The part names by content every file this fold removes: the folded ones, and those an
    # earlier compaction replaced but did not get to remove (it died). Removing that earlier
    # part un-hides what it replaced, and the tombstones folded here stop hiding anything the
    # moment this part exists; a file this part does not name would count again.
    gone = superseded(snap.infos)
    replaces = {i.name: i.sha256 for i in (*folded, *(i for i in snap.infos if gone(i)))}
    name = manifest_name("compacted", sha256_hex("\n".join(f"{n} {h}" for n, h in sorted(replaces.items()))))
    replaces.pop(name, None)
    data = encode_manifest(rows, kind="compacted", shards=shards, bytes_=byts, committed_at=stamps,
                           supersedes=sorted(replaces), replaces=replaces, order=order_by(rows, KEY_ORDER))
    if not backend.put_if_absent(name, data) and read_info(backend, name).replaces != replaces:
        raise StoreError(f"store {backend.url}: {name} exists and folds other files; nothing was removed. "
                         f"Run `l2s store verify`.")
    # Remove the folded files (their rows are in the new part) and those an earlier compaction
    # replaced: exactly the files the part replaces, so a crash between two removals leaves each
    # remaining one superseded by the part itself. Each was read by name and content under the
    # lease: only a lease holder removes a manifest, so the name still holds that content (a
    # writer only creates absent names).
    for n in sorted(replaces):
        backend.remove(n)
    return name
