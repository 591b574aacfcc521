"""A commit's visibility is decided by content, not by file names (the store guide's commit
protocol, invariants 1-6).

Reproduced against the previous store: after compact then delete, re-extracting a recipe
committed nothing ("committed first by another run") because the writer's own check (``commit_of``) found the shard
in the compacted file without applying the tombstone; a delete that died after its tombstone,
then a compaction, then the shard written again gave ``won=True`` with 0 rows visible, and the
next compaction removed the new manifest (the compaction had recorded the reused file name);
a compaction that died after creating its part, then a delete, then a second compaction that
died part-way made the deleted shard visible again (the second part did not name the manifest
the first part replaced, and removed that first part).
"""

from __future__ import annotations

import numpy as np
import pytest

from l2s_data.errors import StoreError
from l2s_data.store import Store
from l2s_data.store import writer as writer_mod

from .conftest import Crashing, committed, expire_leases, rows, sample_ids, write_shard

KEY = ("p2s", "completion_last", 2)


def _write(store: Store, shard: str, rid: str, seed: int, n: int = 6):
    ids = sample_ids(n, prefix=f"{shard}-")
    with store.shard_writer(shard, rid, ids, chunk_bytes=64) as w:
        w.write(*KEY, rows(n, 8, seed), "float32")
    return w, ids, rows(n, 8, seed)


def _visible(store: Store, shard: str, rid: str, ids, want: np.ndarray) -> None:
    snap = store.snapshot()
    assert shard in snap.shards
    np.testing.assert_array_equal(snap.read(rid, *KEY, ids), want)


def test_after_compact_then_delete_a_rerun_commits_every_shard(store):
    rid = store.put_recipe({"r": 1}, name="r")
    for k in range(4):
        _write(store, f"s-{k}", rid, k)
    store.admin.compact()
    store.admin.delete_recipe(rid)
    assert not committed(store, "s-0")  # the tombstone applies
    rid = store.put_recipe({"r": 1}, name="r")
    for k in range(4):
        w, ids, want = _write(store, f"s-{k}", rid, 10 + k)
        assert w.won is True
        _visible(store, f"s-{k}", rid, ids, want)
    assert store.sql("SELECT count(*) AS n FROM manifests")["n"][0].as_py() == 24


def test_a_delete_that_died_after_its_tombstone_then_compact_then_rewrite_stays_visible(store):
    rid = store.put_recipe({"r": 1}, name="r")
    _write(store, "s-0", rid, 0)
    _write(store, "s-1", rid, 1)
    with Crashing(store, at=3) as c:  # lease, tombstone, then dies before removing anything
        store.admin.delete_recipe(rid)
    assert c.dead and store.snapshot().shards == {}
    expire_leases_now(store)
    store.admin.compact()
    w, ids, want = _write(store, "s-0", store.put_recipe({"r": 1}, name="r"), 7)
    assert w.won is True
    _visible(store, "s-0", rid, ids, want)
    assert w.dir not in store.admin.info().orphans
    store.admin.compact()  # before, this removed the new manifest
    _visible(store, "s-0", rid, ids, want)
    store.admin.gc(grace_s=0)  # ...and gc then removed its attempt
    _visible(store, "s-0", rid, ids, want)
    assert store.admin.verify() == []


def expire_leases_now(store: Store) -> None:
    """Mark every held lease released: its holder died (what expiry does an hour later)."""
    for name in store.admin.backend.listdir("leases"):
        if name.endswith(".json"):
            store.admin.backend.put_if_absent(f"leases/{name[:-5]}.released", b"")


def _compact_dies_at(store: Store, at: int) -> None:
    with Crashing(store, at) as c:
        store.admin.compact(min_files=1)
    assert c.dead
    expire_leases_now(store)


def _nothing_of(store: Store, shard: str) -> None:
    """``shard`` counts nowhere: snapshot, the writer's own check, SQL (view and raw rows)."""
    assert store.snapshot().shards == {}
    assert not committed(store, shard)
    for view in ("manifests", "_manifests"):
        assert store.sql(f"SELECT count(*) AS n FROM {view}")["n"][0].as_py() == 0


def test_a_deleted_shard_stays_deleted_when_compactions_die_before_and_after_the_delete(store):
    """The protocol machine's case: a compaction dies after creating its part, leaving the
    folded manifest behind (replaced by that part); the recipe is deleted; a second compaction
    folds the first part and the tombstone into a new part, removes them, and dies before it
    removes the old manifest. Before, the new part named only the files it folded, so with the
    first part gone nothing hid the old manifest, and the deleted shard counted again."""
    rid = store.put_recipe({"r": "a"}, name="a")
    _write(store, "a-0", rid, 0)
    _compact_dies_at(store, 3)  # lease, part, then dies removing manifests/a-0.parquet
    names = store.admin.backend.listdir("manifests")
    assert "a-0.parquet" in names and any(n.startswith("_compacted-") for n in names)
    store.admin.delete_recipe(rid, force=True)
    _nothing_of(store, "a-0")
    _compact_dies_at(store, 4)  # lease, part, first part removed, dies removing the tombstone
    _nothing_of(store, "a-0")
    store.admin.compact(min_files=1)
    store.admin.gc(grace_s=0)
    _nothing_of(store, "a-0")
    assert store.admin.verify() == []


@pytest.mark.parametrize("second", [2, 3, 4, 5, 6, 7])
def test_a_compaction_dying_at_any_removal_never_brings_back_what_an_earlier_one_replaced(store, second):
    """The same sequence beside a shard of another recipe that must stay visible throughout, the
    second compaction dying at each of its steps: creating its part, each of its four removals
    (first part, tombstone, then the two manifests the first part replaced), releasing the lease."""
    rid = store.put_recipe({"r": "a"}, name="a")
    keep = store.put_recipe({"r": "b"}, name="b")
    _write(store, "a-0", rid, 0)
    _, ids, want = _write(store, "b-0", keep, 1)
    _compact_dies_at(store, 3)  # both loose manifests stay behind, replaced
    store.admin.delete_recipe(rid, force=True)
    with Crashing(store, second):
        store.admin.compact(min_files=1)
    expire_leases_now(store)
    assert store.snapshot().shards.keys() == {"b-0"}
    assert not committed(store, "a-0") and committed(store, "b-0")
    _visible(store, "b-0", keep, ids, want)
    store.admin.compact(min_files=1)
    assert store.snapshot().shards.keys() == {"b-0"}
    assert store.admin.verify() == []


def test_a_rewrite_blocked_by_a_dead_manifest_settles_it_and_wins(store):
    rid = store.put_recipe({"r": 1}, name="r")
    _write(store, "s-0", rid, 0)
    with Crashing(store, at=3):
        store.admin.delete_recipe(rid)
    expire_leases_now(store)
    # manifests/s-0.parquet still holds the deleted commit: the writer compacts it away
    w, ids, want = _write(store, "s-0", store.put_recipe({"r": 1}, name="r"), 5)
    assert w.won is True
    _visible(store, "s-0", rid, ids, want)


def test_a_rewrite_blocked_while_a_dead_delete_holds_the_lease_says_so_then_wins(store, monkeypatch):
    rid = store.put_recipe({"r": 1}, name="r")
    _write(store, "s-0", rid, 0)
    with Crashing(store, at=3):
        store.admin.delete_recipe(rid)
    before = store.snapshot().id
    with pytest.raises(StoreError, match="held by a commit that was deleted"):
        _write(store, "s-0", rid, 5)
    assert store.snapshot().id == before  # nothing became visible, nothing was lost
    expire_leases(monkeypatch)
    w, ids, want = _write(store, "s-0", store.put_recipe({"r": 1}, name="r"), 5)
    assert w.won is True
    _visible(store, "s-0", rid, ids, want)


def test_a_writer_whose_check_raced_a_compaction_reports_that_it_lost(store, monkeypatch):
    """The writer checked before another's commit was folded away, then created the name again:
    the compacted commit counts, and the writer says it lost."""
    rid = store.put_recipe({"r": 1}, name="r")
    first, ids, want = _write(store, "s-0", rid, 0)
    store.admin.compact()
    real = writer_mod.commit_of
    calls = []

    def stale_first_check(backend, shard):
        calls.append(shard)
        return None if len(calls) == 1 else real(backend, shard)

    monkeypatch.setattr(writer_mod, "commit_of", stale_first_check)
    late, _, _ = _write(store, "s-0", rid, 9)
    assert late.won is False
    _visible(store, "s-0", rid, ids, want)
    assert store.snapshot().shards["s-0"] == first.attempt
    store.admin.compact()
    _visible(store, "s-0", rid, ids, want)


def test_every_won_commit_is_in_the_next_snapshot_through_compactions_and_deletes(store):
    rid_a = store.put_recipe({"r": "a"}, name="a")
    rid_b = store.put_recipe({"r": "b"}, name="b")
    live = {}
    for k in range(3):
        w, ids, want = _write(store, f"a-{k}", rid_a, k)
        assert w.won
        live[f"a-{k}"] = (rid_a, ids, want)
        w, ids, want = _write(store, f"b-{k}", rid_b, 50 + k)
        assert w.won
        live[f"b-{k}"] = (rid_b, ids, want)
    store.admin.compact()
    store.admin.delete_recipe(rid_a)
    for k in range(3):
        del live[f"a-{k}"]
    store.admin.compact()
    rid_a = store.put_recipe({"r": "a"}, name="a")
    for k in range(3):
        w, ids, want = _write(store, f"a-{k}", rid_a, 100 + k)
        assert w.won
        live[f"a-{k}"] = (rid_a, ids, want)
        for shard, (rid, ids_, want_) in live.items():
            _visible(store, shard, rid, ids_, want_)
    store.admin.compact()
    store.admin.gc(grace_s=0)
    assert set(store.snapshot().shards) == set(live)
    for shard, (rid, ids_, want_) in live.items():
        _visible(store, shard, rid, ids_, want_)


def test_a_compaction_hides_a_file_only_by_name_and_content(store):
    rid = store.put_recipe({"r": 1}, name="r")
    _write(store, "s-0", rid, 0)
    _write(store, "s-1", rid, 1)
    _, name = store.admin.compact()
    info = store.snapshot().infos
    comp = next(i for i in info if i.name == name)
    assert set(comp.replaces) == {"manifests/s-0.parquet", "manifests/s-1.parquet"}
    assert all(len(h) == 64 for h in comp.replaces.values())


def test_sql_underscore_manifests_shows_only_live_rows(store):
    rid = store.put_recipe({"r": 1}, name="r")
    other = store.put_recipe({"r": 2}, name="o")
    write_shard(store, "a", rid, sample_ids(5, "a"))
    write_shard(store, "b", other, sample_ids(5, "b"))
    store.admin.compact()
    store.admin.delete_recipe(rid)
    raw = store.sql("SELECT count(*) AS n FROM _manifests")["n"][0].as_py()
    view = store.sql("SELECT count(*) AS n FROM manifests")["n"][0].as_py()
    assert raw == view == 5


def test_a_snapshot_reads_by_name_what_it_held_when_taken_and_looks_each_name_up_once(store, monkeypatch):
    from l2s_data.store import tables as tables_mod

    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(4)
    want = write_shard(store, "s-0", rid, ids)[KEY]
    snap = store.snapshot()
    looks = []
    real = tables_mod.Tables.resolve_recipe
    monkeypatch.setattr(tables_mod.Tables, "resolve_recipe", lambda self, *a, **k: looks.append(a) or real(self, *a, **k))
    for _ in range(3):
        np.testing.assert_array_equal(snap.read("r", *KEY, ids), want)
    assert len(looks) == 1  # the recipes table is read once, not per read
    late = store.put_recipe({"r": 2}, name="late")  # registered and written after the snapshot
    write_shard(store, "s-1", late, ids, seed=5)
    assert snap.committed_keys("late").num_rows == 0
    assert store.snapshot().committed_keys("late").num_rows == 4
