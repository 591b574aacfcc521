"""Compaction off the commit path: a commit's step folds only loose files and small parts.

Before, every commit past 256 loose manifests folded the whole store into one file, so a
commit's cost grew with the store (each automatic compaction rewrote every row). These tests
pin what a step may touch: the loose files, then parts of one size tier below a row cap, never
a large part, never a tombstone; and that every row stays visible and every deleted one hidden.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from l2s_data.store import Store, compaction
from l2s_data.store.manifests import read_info

from .conftest import sample_ids, write_shard

KEYS = (("input", "prompt_last", 1), ("p2s", "completion_last", 2))


def _names(store: Store) -> list[str]:
    return sorted(p.name for p in (Path(store.url) / "manifests").iterdir())


def _write(store: Store, rid: str, first: int, count: int, n: int = 4) -> dict[str, list[str]]:
    out = {}
    for k in range(first, first + count):
        ids = sample_ids(n, prefix=f"k{k}-")
        write_shard(store, f"m{k:03d}", rid, ids, keys=KEYS, seed=k)
        out[f"m{k:03d}"] = ids
    return out


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def test_a_commit_folds_the_loose_files_and_leaves_the_large_part_alone(store, monkeypatch):
    rid = store.put_recipe({"r": 1}, name="r")
    written = _write(store, rid, 0, 6)
    store.admin.compact()
    [big] = _names(store)
    before = _identity(Path(store.url) / "manifests" / big)
    monkeypatch.setattr(compaction, "LOOSE_FILES", 3)
    monkeypatch.setattr(compaction, "STEP_ROWS", 6 * 4 * len(KEYS) - 1)  # the big part is above the cap
    written |= _write(store, rid, 6, 4)  # the 4th loose file triggers a step
    names = _names(store)
    assert big in names and _identity(Path(store.url) / "manifests" / big) == before  # not rewritten
    parts = [n for n in names if n.startswith("_compacted-")]
    assert len(parts) == 2 and not [n for n in names if not n.startswith("_")]
    new = read_info(store.admin.backend, f"manifests/{next(p for p in parts if p != big)}")
    assert sorted(new.shards) == [f"m{k:03d}" for k in range(6, 10)]  # only the loose files' shards
    snap = store.snapshot()
    assert sorted(snap.shards) == sorted(written)
    for shard, ids in written.items():
        assert snap.read("r", "input", "prompt_last", 1, ids).shape == (len(ids), 8)


def test_parts_of_one_tier_merge_and_the_snapshot_id_does_not_change(store, monkeypatch):
    rid = store.put_recipe({"r": 1}, name="r")
    monkeypatch.setattr(compaction, "LOOSE_FILES", 1)
    monkeypatch.setattr(compaction, "FANOUT", 2)
    written = {}
    ids_seen = []
    for k in range(0, 8, 2):
        written |= _write(store, rid, k, 2)  # every second commit folds two loose files into a part
        ids_seen.append(store.snapshot().id)
    parts = [n for n in _names(store) if n.startswith("_compacted-")]
    # 4 parts of 16 rows were made; pairs of one tier merged as they appeared: 16+16 -> 32, twice,
    # then 32+32 -> 64: one part holds everything, and no loose file is left.
    assert len(parts) == 1 and len(_names(store)) == 1
    assert read_info(store.admin.backend, f"manifests/{parts[0]}").rows == 8 * 4 * len(KEYS)
    assert sorted(store.snapshot().shards) == sorted(written)
    store2 = Store.open(store.url)
    assert store2.snapshot().id == ids_seen[-1]


def test_a_step_never_merges_past_its_row_cap(store, monkeypatch):
    rid = store.put_recipe({"r": 1}, name="r")
    monkeypatch.setattr(compaction, "LOOSE_FILES", 1)
    monkeypatch.setattr(compaction, "FANOUT", 2)
    monkeypatch.setattr(compaction, "STEP_ROWS", 2 * 4 * len(KEYS))  # one loose fold, never a merge
    _write(store, rid, 0, 6)
    parts = [n for n in _names(store) if n.startswith("_compacted-")]
    assert len(parts) == 3
    assert {read_info(store.admin.backend, f"manifests/{p}").rows for p in parts} == {2 * 4 * len(KEYS)}
    assert store.admin.compact()[0] == 3 and len(_names(store)) == 1  # the full compaction still folds all


def test_a_step_keeps_the_tombstone_that_hides_rows_of_a_part_it_did_not_rewrite(store, monkeypatch):
    gone = store.put_recipe({"r": "gone"}, name="gone")
    kept = store.put_recipe({"r": "kept"}, name="kept")
    _write(store, gone, 0, 2)
    store.admin.compact()  # the deleted rows now sit in a part
    store.admin.delete_recipe("gone")
    tombs = [n for n in _names(store) if n.startswith("_tombstone-")]
    assert tombs
    monkeypatch.setattr(compaction, "LOOSE_FILES", 2)
    monkeypatch.setattr(compaction, "STEP_ROWS", 1)  # no merge of parts: only the loose fold
    written = _write(store, kept, 10, 3)
    names = _names(store)
    assert set(tombs) <= set(names)
    assert not [n for n in names if not n.startswith("_")]
    snap = store.snapshot()
    assert sorted(snap.shards) == sorted(written)
    assert snap.rows(pc.field("recipe_id") == gone).num_rows == 0
    assert store.sql("SELECT count(*) AS n FROM manifests WHERE recipe_id = ?", params=[gone])["n"][0].as_py() == 0


def test_a_loser_of_a_double_commit_is_folded_away_and_the_winner_keeps_counting(store, monkeypatch):
    from l2s_data.store import writer as writer_mod

    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(4, prefix="dup-")
    first = write_shard(store, "dup", rid, ids, keys=KEYS, seed=1)
    store.admin.compact()  # the first commit is now in a part, its loose name is free
    real, calls = writer_mod.commit_of, []

    def stale_first_check(backend, shard):  # the check ran before the compaction folded it
        calls.append(shard)
        return None if len(calls) == 1 else real(backend, shard)

    monkeypatch.setattr(writer_mod, "commit_of", stale_first_check)
    w = store.shard_writer("dup", rid, ids)
    with w:
        for view, pos, layer in KEYS:
            w.write(view, pos, layer, np.ones((4, 8), np.float32), "float32")
    assert w.won is False and "dup.parquet" in _names(store)  # a loose loser
    monkeypatch.setattr(writer_mod, "commit_of", real)
    monkeypatch.setattr(compaction, "LOOSE_FILES", 1)
    write_shard(store, "other", rid, sample_ids(4, prefix="o-"), keys=KEYS, seed=2)  # runs a step
    assert not [n for n in _names(store) if not n.startswith("_")]  # the loser's file is folded away
    snap = store.snapshot()
    assert w.attempt in snap.excluded or w.attempt not in {a for _, a in snap.attempts}
    assert snap.rows(pc.field("attempt") == w.attempt).num_rows == 0
    got = snap.read("r", "input", "prompt_last", 1, ids)
    np.testing.assert_array_equal(got, first[("input", "prompt_last", 1)])


@pytest.mark.parametrize("loose", [3, 40])
def test_a_commit_reads_no_other_shard_s_manifest(store, monkeypatch, loose):
    # A commit looks at its own name, the parts and the tombstones: a damaged manifest of
    # another shard (which a snapshot would refuse) does not stop it, however many there are.
    monkeypatch.setattr(compaction, "LOOSE_FILES", 10_000)
    rid = store.put_recipe({"r": 1}, name="r")
    _write(store, rid, 0, loose, n=2)
    victim = Path(store.url) / "manifests" / "m000.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    ids = sample_ids(2, prefix="new-")
    w = store.shard_writer("new", rid, ids)
    with w:
        for view, pos, layer in KEYS:
            w.write(view, pos, layer, np.zeros((2, 8), np.float32), "float32")
    assert w.won is True


def test_maintain_folds_every_file_and_can_collect_garbage(store):
    rid = store.put_recipe({"r": 1}, name="r")
    written = _write(store, rid, 0, 3)
    before = store.snapshot().id
    orphan = store.shard_writer("m000", rid, written["m000"])  # an attempt that never commits
    orphan.__enter__()
    orphan.write("input", "prompt_last", 1, np.zeros((4, 8), np.float32), "float32")
    folded, gc = store.maintain(gc=True, grace_s=0)
    assert folded == 3 and len(_names(store)) == 1 and _names(store)[0].startswith("_compacted-")
    assert store.snapshot().id == before
    assert gc is not None and any(orphan.attempt in r for r in gc.removed)
    assert store.maintain() == (0, None)  # one part already: nothing to fold
