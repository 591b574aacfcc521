"""Write, commit, snapshot and read: the core contract of the store."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from l2s_data.errors import (
    KeyNotFoundError, CorruptManifestError, SchemaMismatchError, StoreNotFoundError, WriteMismatchError,
)
from l2s_data.store import Store

from .conftest import committed, rows, sample_ids, write_shard


def test_open_refuses_a_missing_store_and_creates_one_when_asked(tmp_path):
    with pytest.raises(StoreNotFoundError, match="create=True"):
        Store.open(tmp_path / "nope")
    s = Store.open(tmp_path / "yes", create=True)
    assert Store.open(s.url).url == s.url


def test_recipe_ids_are_stable_hashes_and_names_resolve(store):
    rid = store.put_recipe({"b": [1, 2], "a": "x"}, name="mine")
    assert rid == store.put_recipe({"a": "x", "b": [1, 2]})
    assert len(rid) == 32 and store.recipe("mine").id == rid
    assert store.recipe("mine").spec == {"a": "x", "b": [1, 2]}
    with pytest.raises(SchemaMismatchError, match="already names"):
        store.put_recipe({"other": 1}, name="mine")
    with pytest.raises(KeyNotFoundError, match="nope"):
        store.recipe("nope")


@pytest.mark.parametrize("dtype,tol", [("float32", 0), ("float16", 1e-3), ("bfloat16", 1e-2)])
def test_round_trip_by_key_in_any_order(store, dtype, tol):
    rid = store.put_recipe({"r": dtype}, name="r")
    ids = sample_ids(11)
    data = write_shard(store, "a", rid, ids, dtype=dtype, chunk_bytes=100)
    x = data[("p2s", "completion_last", 2)]
    order = ids[::-1][:7]
    got = store.snapshot().read("r", "p2s", "completion_last", 2, order)
    want = x[[ids.index(s) for s in order]]
    assert got.dtype == np.float32 and got.shape == (7, 8)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_bfloat16_is_stored_as_uint16_bits_that_match_torch(store):
    rid = store.put_recipe({"r": 1})
    ids = sample_ids(5)
    t = torch.randn(5, 16)
    with store.shard_writer("bf", rid, ids) as w:
        w.write("pos", "sequence_last-1", 0, t, "bfloat16")
    got = store.snapshot().read(rid, "pos", "sequence_last-1", 0, ids)
    assert torch.equal(torch.from_numpy(got), t.bfloat16().float())


def test_committed_keys_list_every_row_of_a_recipe(store):
    rid = store.put_recipe({"r": 1})
    write_shard(store, "a", rid, sample_ids(3), keys=(("input", "prompt_last", 1), ("p2s", "completion_last", 2)))
    keys = store.snapshot().committed_keys(rid)
    assert keys.column_names == ["view", "position", "layer", "sample_id"]
    assert keys.num_rows == 6


def test_second_attempt_at_a_committed_shard_loses_and_changes_nothing(store):
    rid = store.put_recipe({"r": 1})
    ids = sample_ids(4)
    first = write_shard(store, "a", rid, ids)
    snap = store.snapshot()
    with store.shard_writer("a", rid, ids) as w:
        w.write("p2s", "completion_last", 2, rows(4, 8, 99), "float32")
    assert w.won is False
    again = store.snapshot()
    assert again.id == snap.id
    np.testing.assert_array_equal(again.read(rid, "p2s", "completion_last", 2, ids), first[("p2s", "completion_last", 2)])


def test_reader_snapshot_sees_only_what_was_committed_before_it_opened(store):
    rid = store.put_recipe({"r": 1})
    write_shard(store, "a", rid, sample_ids(3, "a"))
    snap = store.snapshot()
    write_shard(store, "b", rid, sample_ids(3, "b"))
    assert set(snap.shards) == {"a"}
    with pytest.raises(KeyNotFoundError, match="b00000"):
        snap.read(rid, "p2s", "completion_last", 2, ["b00000"])
    assert set(store.snapshot().shards) == {"a", "b"}
    assert store.snapshot().id != snap.id


def test_an_exception_inside_the_block_leaves_an_invisible_orphan(store):
    rid = store.put_recipe({"r": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with store.shard_writer("a", rid, sample_ids(3)) as w:
            w.write("p2s", "completion_last", 2, rows(3, 8), "float32")
            raise RuntimeError("boom")
    assert w.won is None
    assert store.snapshot().row_count == 0
    assert not committed(store, "a")


@pytest.mark.parametrize(
    "array,dtype,match",
    [
        (np.zeros((3, 8), np.float32), "float32", "shape"),          # 3 rows for 4 ids
        (np.zeros((4,), np.float32), "float32", "shape"),            # rank 1
        (np.zeros((4, 8), np.int64), "float32", "floating point"),  # ints
        (np.zeros((4, 8), np.float32), "float64", "dtype"),          # unsupported store dtype
        ("not an array", "float32", "shape"),
    ],
)
def test_shape_or_dtype_mismatch_is_refused_before_anything_is_written(store, array, dtype, match):
    rid = store.put_recipe({"r": 1})
    with pytest.raises(WriteMismatchError, match=match):
        with store.shard_writer("a", rid, sample_ids(4)) as w:
            w.write("p2s", "completion_last", 2, array, dtype)
    attempt = store.admin.backend.listdir("shards/a")
    assert len(attempt) == 1
    # Only the attempt's own marker exists: no array folder was started.
    assert store.admin.backend.listdir(f"shards/a/{attempt[0]}") == ["attempt.json"]
    assert not committed(store, "a")


def test_a_second_array_with_another_width_is_refused(store):
    rid = store.put_recipe({"r": 1})
    with pytest.raises(WriteMismatchError, match="D=8"):
        with store.shard_writer("a", rid, sample_ids(2)) as w:
            w.write("pos", "completion_last", 2, rows(2, 8), "float16")
            w.write("neg", "completion_last", 2, rows(2, 9), "float16")


@pytest.mark.parametrize("shard", ["", "../x", "a/b", "_hidden", "x" * 200])
def test_bad_shard_ids_are_refused(store, shard):
    with pytest.raises(WriteMismatchError):
        store.shard_writer(shard, "r", ["s"])


def test_duplicate_or_empty_sample_ids_are_refused(store):
    with pytest.raises(WriteMismatchError, match="duplicate"):
        store.shard_writer("a", "r", ["s", "s"])
    with pytest.raises(WriteMismatchError, match="empty"):
        store.shard_writer("a", "r", [])


def test_a_manifest_that_does_not_match_the_schema_is_refused(store):
    bad = pa.table({"recipe_id": ["r"], "sample_id": ["s"]})
    import pyarrow.parquet as pq

    store.admin.backend.makedirs("manifests")
    pq.write_table(bad, store.admin.backend.path("manifests/evil.parquet"))
    with pytest.raises(CorruptManifestError, match="manifests/evil.parquet"):
        store.snapshot()
    store.admin.backend.write_bytes("manifests/evil.parquet", b"not parquet at all")
    with pytest.raises(CorruptManifestError, match="not a Parquet file"):
        store.snapshot()


def test_put_tables_validate_their_schema(store):
    with pytest.raises(SchemaMismatchError, match="unknown column"):
        store.put("errors", [{"stage": "x", "error_type": "E", "message": "m", "oops": 1}])
    with pytest.raises(SchemaMismatchError, match="stage"):
        store.put("errors", [{"error_type": "E", "message": "m"}])
    store.put("errors", [{"recipe_id": "r", "sample_id": "s", "stage": "capture", "error_type": "PromptTooLongError",
                       "message": "too long", "shard": "a"}])
    store.put("errors", [{"recipe_id": "r", "sample_id": "s", "stage": "capture", "error_type": "PromptTooLongError",
                       "message": "too long", "shard": "a"}])
    assert store.sql("SELECT * FROM _errors").num_rows == 2  # two parts (different created_at), two rows


def test_memory_urls_work_through_fsspec():
    import uuid

    s = Store.open(f"memory://l2s-{uuid.uuid4().hex}", create=True)
    rid = s.put_recipe({"m": 1})
    data = write_shard(s, "a", rid, sample_ids(5))
    assert s.url.startswith("memory://")
    np.testing.assert_array_equal(
        s.snapshot().read(rid, "p2s", "completion_last", 2, sample_ids(5)), data[("p2s", "completion_last", 2)]
    )
