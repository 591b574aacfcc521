"""info, verify, gc, compact and delete, on real stores."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from l2s_data.errors import CorruptChunkError, ReferencedRecipeError
from l2s_data.store import ops
from l2s_data.store.manifests import KEY_ORDER, order_by

from .conftest import committed, sample_ids, write_shard


def _flip_a_byte(store, path: str, offset: int = 10) -> None:
    p = f"{store.url}/{path}"
    data = bytearray(open(p, "rb").read())
    data[offset] ^= 0x01
    open(p, "wb").write(bytes(data))


def test_info_counts_recipes_rows_shards_bytes_and_orphans(store):
    rid = store.put_recipe({"r": 1}, name="named")
    write_shard(store, "a", rid, sample_ids(4), keys=(("pos", "completion_last", 1), ("neg", "completion_last", 1)))
    write_shard(store, "b", rid, sample_ids(4, "t"))
    with pytest.raises(RuntimeError):
        with store.shard_writer("c", rid, ["x"]) as w:
            w.write("p2s", "completion_last", 2, np.ones((1, 8), np.float32), "float32")
            raise RuntimeError("crash")
    i = store.admin.info()
    assert (i.rows, i.committed_shards, len(i.orphans)) == (12, 2, 1)
    assert i.bytes > i.orphan_bytes > 0
    assert i.recipes.to_pylist() == [{"recipe_id": rid, "name": "named", "keys": 3, "rows": 12, "shards": 2}]


def test_verify_finds_a_flipped_byte_and_reading_that_chunk_names_shard_and_recipe(store):
    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(10)
    write_shard(store, "good", rid, ids[:5])
    write_shard(store, "bad", rid, ids[5:], chunk_bytes=64)  # 2 rows (of 8 float32) per chunk
    assert store.admin.verify() == []
    attempt = store.snapshot().shards["bad"]
    _flip_a_byte(store, f"shards/bad/{attempt}/p2s.completion_last.L2/c/1/0")
    problems = store.admin.verify()
    assert len(problems) == 1
    assert problems[0].shard == "bad" and problems[0].recipe_id == rid and "c/1/0" in problems[0].what
    snap = store.snapshot()
    np.testing.assert_array_equal(snap.read(rid, "p2s", "completion_last", 2, ids[:5]).shape, (5, 8))
    with pytest.raises(CorruptChunkError, match=f"shard bad, recipe {rid}") as e:
        snap.read(rid, "p2s", "completion_last", 2, [ids[7]])  # row 2 -> chunk 1
    assert "crc32c" in str(e.value)
    snap.read(rid, "p2s", "completion_last", 2, [ids[5]])  # chunk 0 is intact


def test_verify_reports_a_missing_chunk_and_a_truncated_one(store):
    rid = store.put_recipe({"r": 1})
    write_shard(store, "a", rid, sample_ids(6), chunk_bytes=64)
    attempt = store.snapshot().shards["a"]
    base = f"shards/a/{attempt}/p2s.completion_last.L2"
    store.admin.backend.remove(f"{base}/c/0/0")
    store.admin.backend.write_bytes(f"{base}/c/2/0", b"short")
    problems = store.admin.verify()
    assert sorted(p.what.rsplit("/", 3)[-2] for p in problems) == ["0", "2"]
    with pytest.raises(CorruptChunkError, match="missing"):
        store.snapshot().read(rid, "p2s", "completion_last", 2, sample_ids(1))


def test_gc_removes_orphans_but_keeps_a_recent_uncommitted_attempt(store):
    rid = store.put_recipe({"r": 1})
    write_shard(store, "a", rid, sample_ids(3))
    w = store.shard_writer("live", rid, sample_ids(3)).__enter__()  # a writer still at work
    w.write("p2s", "completion_last", 2, np.ones((3, 8), np.float32), "float32")
    r = store.admin.gc(grace_s=3600)
    assert r.removed == [] and r.kept_recent == [w.dir]
    assert store.admin.gc(grace_s=0, dry_run=True).removed == [w.dir]
    assert store.admin.gc(grace_s=0).removed == [w.dir]
    assert store.admin.backend.listdir("shards") == ["a"]
    np.testing.assert_array_equal(store.snapshot().read(rid, "p2s", "completion_last", 2, sample_ids(3)).shape, (3, 8))


def test_compact_folds_manifests_into_one_and_keeps_every_key_and_the_snapshot_id(store):
    rid = store.put_recipe({"r": 1})
    data = {}
    for j in range(6):
        ids = sample_ids(3, f"s{j}-")
        data.update(zip(ids, write_shard(store, f"m{j}", rid, ids, seed=j)[("p2s", "completion_last", 2)]))
    before = store.snapshot()
    n, name = store.admin.compact()
    assert n == 6 and name.startswith("manifests/_compacted-")
    assert store.admin.backend.listdir("manifests") == [name.split("/")[1]]
    after = store.snapshot()
    assert after.id == before.id and after.rows().equals(before.rows())
    ids = sorted(data)
    np.testing.assert_array_equal(after.read(rid, "p2s", "completion_last", 2, ids), np.stack([data[s] for s in ids]))
    # A committed shard folded away still counts as committed: a new attempt loses.
    with store.shard_writer("m0", rid, sample_ids(3, "s0-")) as w:
        w.write("p2s", "completion_last", 2, np.zeros((3, 8), np.float32), "float32")
    assert w.won is False and committed(store, "m0")
    write_shard(store, "m9", rid, sample_ids(3, "s9-"))
    assert store.admin.compact()[0] == 2  # the compacted file plus the new one


def test_compact_writes_the_rows_a_plain_sort_by_key_gives(store):
    # Compaction holds rows with dictionary-encoded text and writes them in order a row group at
    # a time; the file must hold exactly what sorting the plain rows would.
    r1, r2 = store.put_recipe({"r": 1}), store.put_recipe({"r": 2})
    keys = (("p2s", "completion_last", 2), ("input", "prompt_last", 10), ("input", "prompt_last", 3))
    for j in range(8):
        if j == 5:
            store.admin.compact()  # later files fold into an earlier compaction's file
        write_shard(store, f"m{j}", r1 if j % 2 else r2, sample_ids(4, f"z{9 - j}-"), keys=keys, seed=j)
    store.admin.delete_recipe(r2, force=True)  # a tombstone: its rows must not come back
    write_shard(store, "m8", r2, sample_ids(3, "a-"), keys=keys)
    plain = store.snapshot().rows()
    assert set(plain["recipe_id"].to_pylist()) == {r1, r2} and plain.num_rows == 4 * 4 * 3 + 3 * 3
    _, name = store.admin.compact()
    got = pq.read_table(f"{store.url}/{name}")
    want = plain.sort_by([(c, "ascending") for c in KEY_ORDER])
    assert got.replace_schema_metadata(None).equals(want.replace_schema_metadata(None))


def test_order_by_sorts_dictionary_columns_by_value_across_chunks():
    # Each chunk has its own dictionary, in order of first appearance (not sorted).
    s = pa.chunked_array([pa.array(["b", "a", "c"]).dictionary_encode(), pa.array(["a", "d", "b"]).dictionary_encode()])
    t = pa.table({"s": s, "n": [3, 2, 1, 0, 5, 4]})
    got = t.take(order_by(t, ("s", "n")))
    assert got["s"].to_pylist() == ["a", "a", "b", "b", "c", "d"]
    assert got["n"].to_pylist() == [0, 2, 3, 4, 1, 5]


def test_readers_stay_correct_while_compaction_runs(store):
    rid = store.put_recipe({"r": 1})
    for j in range(20):
        write_shard(store, f"m{j:02d}", rid, sample_ids(2, f"s{j}-"))
    want = store.snapshot()
    seen, errors = [], []

    def read_loop():
        try:
            for _ in range(15):
                s = store.snapshot()
                seen.append((s.id, s.row_count))
        except Exception as exc:  # noqa: BLE001 - any failure is the test's finding
            errors.append(exc)

    t = threading.Thread(target=read_loop)
    t.start()
    store.admin.compact()
    t.join()
    assert errors == []
    assert set(seen) == {(want.id, 40)}


def test_delete_is_refused_while_runs_reference_the_recipe_unless_forced(store):
    keep = store.put_recipe({"keep": 1}, name="keep")
    drop = store.put_recipe({"drop": 1}, name="drop")
    write_shard(store, "k", keep, sample_ids(3))
    write_shard(store, "d", drop, sample_ids(3))
    store.admin.compact()  # mixed manifests: delete must rewrite, not just remove
    write_shard(store, "d2", drop, sample_ids(3, "x"))
    store.put("runs", [{"run_id": "r1", "kind": "train", "recipe_ids": [drop], "status": "done", "config_json": "{}"}])
    with pytest.raises(ReferencedRecipeError, match="r1"):
        store.admin.delete_recipe("drop")
    assert store.snapshot().row_count == 9
    r = store.admin.delete_recipe("drop", force=True)
    assert r.rows == 6 and sorted(set(r.shards)) == ["d", "d2"]
    snap = store.snapshot()
    assert set(snap.rows()["recipe_id"].to_pylist()) == {keep}
    assert store.admin.backend.listdir("shards") == ["k"]
    assert snap.read("keep", "p2s", "completion_last", 2, sample_ids(3)).shape == (3, 8)
    assert store.sql("SELECT recipe_id FROM recipes")["recipe_id"].to_pylist() == [keep]
    assert store.admin.verify() == []


def test_gc_removes_temporaries_left_by_an_interrupted_commit(store):
    rid = store.put_recipe({"r": 1})
    write_shard(store, "a", rid, sample_ids(2))
    store.admin.backend.write_bytes("manifests/.b.parquet.dead.tmp", b"half")
    assert store.snapshot().row_count == 2  # invisible to readers
    assert store.admin.gc(grace_s=0).removed == ["manifests/.b.parquet.dead.tmp"]
    assert store.admin.backend.stale_temporaries("manifests", 0) == []


def test_a_catalog_opened_before_a_compaction_still_answers_after_it(store):
    rid = store.put_recipe({"r": 1})
    for j in range(6):
        write_shard(store, f"m{j}", rid, sample_ids(2, f"s{j}-"))
    with store.catalog() as cat:
        before = cat.query("SELECT count(*) AS n FROM manifests")["n"][0].as_py()
        store.admin.compact()
        write_shard(store, "late", rid, sample_ids(2, "late-"))
        store.admin.compact()  # twice: a reader may outlive more than one compaction
        after = cat.query("SELECT count(*) AS n FROM manifests")["n"][0].as_py()
        write_shard(store, "later", rid, sample_ids(2, "later-"))
        store.admin.compact()
        head = cat.head("SELECT sample_id FROM manifests ORDER BY sample_id", 3)  # a streamed statement
    assert before == after == head.total_rows == 12  # the catalog's snapshot: the late shards are not in it
    assert head.table["sample_id"].to_pylist() == ["s0-00000", "s0-00001", "s1-00000"]
