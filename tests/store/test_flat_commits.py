"""A commit's cost does not grow with the number of manifests, and the catalog reads only its files.

Before, a commit listed ``manifests/`` three times (its check before the create, its check after
it, and the compaction step's count of loose files), so at 10,000 loose manifests a commit cost
3x one at 10. These tests count the listings on a real (in-memory) fsspec filesystem, and check
that the cache that replaced them follows every compaction and tombstone another process makes.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb
import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from l2s_data.errors import SQLRefusedError
from l2s_data.store import Store, compaction
from l2s_data.store.leases import Lease, idle_stamp

from .conftest import committed, sample_ids, tables, write_shard

KEYS = (("input", "prompt_last", 1), ("p2s", "completion_last", 2))


class ListingMemoryFS(MemoryFileSystem):
    """fsspec's in-memory filesystem, recording every folder it lists (``ls`` and ``glob``)."""

    protocol = "l2s-listing-mem"
    listed: list[str] = []

    def ls(self, path, detail=True, **kwargs):
        type(self).listed.append(self._strip_protocol(path).rstrip("/"))
        return super().ls(path, detail=detail, **kwargs)

    def glob(self, path, **kwargs):
        type(self).listed.append(self._strip_protocol(path).rsplit("/", 1)[0])
        return super().glob(path, **kwargs)


fsspec.register_implementation(ListingMemoryFS.protocol, ListingMemoryFS, clobber=True)


def _commit(store: Store, rid: str, shard: str) -> bool:
    ids = sample_ids(2, prefix=f"{shard}-")
    with store.shard_writer(shard, rid, ids) as w:
        for view, pos, layer in KEYS:
            w.write(view, pos, layer, np.ones((2, 8), np.float32), "float32")
    return w.won


def test_commits_do_not_list_the_manifests_folder(monkeypatch):
    monkeypatch.setattr(compaction, "LOOSE_FILES", 10_000)  # keep every manifest loose
    root = f"l2s-listing-{uuid.uuid4().hex}"
    store = Store.open(f"{ListingMemoryFS.protocol}://{root}", create=True)
    rid = store.put_recipe({"r": 1}, name="r")
    for k in range(40):
        assert _commit(store, rid, f"a{k:03d}")
    ListingMemoryFS.listed.clear()
    for k in range(40):
        assert _commit(store, rid, f"b{k:03d}")
    folders = [p.split(f"{root}/", 1)[1] for p in ListingMemoryFS.listed]
    # Before: 3 listings of manifests/ a commit (120 here). Now the step's count of loose files
    # runs once every LOOSE_FILES // LOOK_SHARE commits (625 here: none of these 40), and the
    # parts' names come from the cache while no lease was taken: what a commit lists is the
    # small lease folder (once per check), the recipes and its own attempt folder.
    assert "manifests" not in folders
    assert folders.count("leases") == 2 * 40
    assert {f.split("/")[0] for f in folders} == {"leases", "recipes", "shards"}
    snap = store.snapshot()
    assert len(snap.shards) == 80


def test_the_step_still_counts_the_loose_files_now_and_then(monkeypatch):
    monkeypatch.setattr(compaction, "LOOSE_FILES", 64)  # looks on commits 0, 4, 8...
    root = f"l2s-listing-{uuid.uuid4().hex}"
    store = Store.open(f"{ListingMemoryFS.protocol}://{root}", create=True)
    rid = store.put_recipe({"r": 1}, name="r")
    ListingMemoryFS.listed.clear()
    for k in range(80):
        assert _commit(store, rid, f"c{k:03d}")
    names = [n for n in store.admin.backend.listdir("manifests")]
    loose = [n for n in names if not n.startswith("_")]
    assert any(n.startswith("_compacted-") for n in names)  # a step folded them
    assert len(loose) <= 64 + 64 // compaction.LOOK_SHARE
    assert len(store.snapshot().shards) == 80


def test_a_compaction_by_another_process_is_seen_by_the_next_commit(tmp_path, monkeypatch):
    # Two Store objects on one folder have two backends, hence two caches: as two processes.
    monkeypatch.setattr(compaction, "LOOSE_FILES", 10_000)
    writer = Store.open(tmp_path / "store", create=True)
    other = Store.open(tmp_path / "store")
    rid = writer.put_recipe({"r": 1}, name="r")
    assert _commit(writer, rid, "s0") and _commit(writer, rid, "s1")  # the writer's cache: no part
    other.admin.compact()  # folds s0 and s1 into a part; manifests/s0.parquet is gone, its name free
    assert not (Path(writer.url) / "manifests" / "s0.parquet").exists()
    # A rerun of s0 in the writer's process: its cached names (no part) are stale, and the lease
    # folder says so. With the stale names it would create s0.parquet again and report won=True
    # although the compacted commit counts (invariant 4).
    assert _commit(writer, rid, "s0") is False
    assert committed(writer, "s0") and other.snapshot().shards["s0"] == writer.snapshot().shards["s0"]


def test_a_tombstone_by_another_process_is_seen_by_the_next_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "LOOSE_FILES", 10_000)
    writer = Store.open(tmp_path / "store", create=True)
    other = Store.open(tmp_path / "store")
    rid = writer.put_recipe({"r": "gone"}, name="gone")
    assert _commit(writer, rid, "s0")
    other.admin.compact()
    assert committed(writer, "s0")  # fills the writer's cache with the part
    other.admin.delete_recipe("gone")
    assert not committed(writer, "s0")  # the tombstone is seen
    rid = writer.put_recipe({"r": "gone"}, name="gone")
    assert _commit(writer, rid, "s0") is True  # and the shard commits again


def test_the_lease_stamp_is_none_while_a_lease_is_held(store):
    before = idle_stamp(store.admin.backend)
    assert before == ()
    with Lease(store.admin.backend, op="test"):
        assert idle_stamp(store.admin.backend) is None  # a holder may be creating parts: no cache
    after = idle_stamp(store.admin.backend)
    assert after is not None and after != before


@pytest.fixture
def filled(store):
    ids = sample_ids(12)
    samples, memberships = tables(ids)
    store.put("samples", samples, memberships=memberships)
    rid = store.put_recipe({"r": 1}, name="r")
    write_shard(store, "m0", rid, ids[:6], keys=KEYS)
    write_shard(store, "m1", rid, ids[6:], keys=KEYS, seed=1)
    return store


def test_the_catalog_reads_the_manifests_natively_and_no_other_file(filled):
    store = filled
    live = sorted(str(p) for p in (Path(store.url) / "manifests").glob("*.parquet"))
    # A user statement that names a file, even a live manifest DuckDB may open, is refused
    # before it runs: it would show rows the views hide (a tombstoned attempt's, in a live part).
    for q in (f"SELECT count(*) FROM read_parquet('{live[0]}')", f"SELECT count(*) FROM '{live[0]}'",
              "SELECT * FROM manifests WHERE sample_id IN (SELECT sample_id FROM parquet_scan('x.parquet'))",
              "WITH t AS (SELECT * FROM glob('*')) SELECT * FROM t", "SELECT * FROM query('SELECT 1')"):
        with pytest.raises(SQLRefusedError, match="SQL refused"):
            store.sql(q)
    assert store.sql("SELECT count(*) AS n FROM range(3)")["n"][0].as_py() == 3
    assert store.sql("SELECT count(*) AS n FROM manifests")["n"][0].as_py() == 12 * len(KEYS)
    with store.catalog() as cat:
        # Below the statement check, DuckDB opens the snapshot's files and nothing else.
        assert cat.con.execute("SELECT count(*) FROM read_parquet(?)", [live]).fetchall()[0][0] == 24
        part = next((Path(store.url) / "memberships").glob("*.parquet"))
        with pytest.raises(duckdb.Error):
            cat.con.execute("SELECT count(*) FROM read_parquet(?)", [str(part)])


def test_the_native_catalog_hides_a_tombstoned_attempt_inside_a_live_part(filled):
    store = filled
    keep = store.put_recipe({"r": "keep"}, name="keep")
    write_shard(store, "k0", keep, sample_ids(3, prefix="k-"), keys=KEYS)
    store.admin.compact()  # one part holds both recipes' rows
    store.admin.delete_recipe("r")  # a tombstone hides r's attempts inside that part
    n = store.sql("SELECT recipe_id, count(*) AS n FROM _manifests GROUP BY ALL").to_pylist()
    assert n == [{"recipe_id": keep, "n": 3 * len(KEYS)}]
    assert store.sql("SELECT count(*) AS n FROM manifests")["n"][0].as_py() == 3 * len(KEYS)
