"""The keyed loader: selection by SQL, exact coverage, determinism, DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from l2s_data.errors import KeyNotFoundError
from l2s_data.store import Key, Store

from .conftest import sample_ids, tables, write_shard

X = Key("in", "input", "prompt_last", 1)
Y = Key("beh", "p2s", "completion_last", 2)
N = 90


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """x (float32) and y (float16) written in different shards, row orders and chunk sizes."""
    store = Store.open(tmp_path_factory.mktemp("loader") / "store", create=True)
    rin, rbeh = store.put_recipe({"in": 1}, name="in"), store.put_recipe({"beh": 1}, name="beh")
    ids = sample_ids(N)
    xs, ys = {}, {}
    for j in range(3):
        part = ids[j * 30 : (j + 1) * 30]
        d = write_shard(store, f"in{j}", rin, part, keys=[("input", "prompt_last", 1)], seed=j, chunk_bytes=8 * 4 * 7)
        xs.update(zip(part, d[("input", "prompt_last", 1)]))
        part2 = part[::-1]
        d = write_shard(store, f"beh{j}", rbeh, part2, keys=[("p2s", "completion_last", 2)], seed=10 + j,
                        dtype="float16", chunk_bytes=8 * 2 * 5)
        ys.update(zip(part2, d[("p2s", "completion_last", 2)].astype(np.float16).astype(np.float32)))
    samples, memberships = tables(ids)
    store.put("samples", samples, memberships=memberships)
    return store, xs, ys


def _epoch(ds, epoch=0):
    ds.set_epoch(epoch)
    return [(x, y, list(ids)) for x, y, ids in ds]


@pytest.mark.parametrize("in_memory", [False, True])
def test_every_selected_row_comes_exactly_once_with_matching_x_and_y(paired, in_memory):
    store, xs, ys = paired
    ds = store.columns((X, Y), where="split = 'train'", batch_size=8, with_ids=True, in_memory=in_memory, buffer_rows=16)
    assert ds.in_memory is in_memory
    seen = []
    for x, y, ids in _epoch(ds):
        assert x.dtype == torch.float32 and y.dtype == torch.float32 and x.shape == (len(ids), 8)
        np.testing.assert_array_equal(x.numpy(), np.stack([xs[s] for s in ids]))
        np.testing.assert_array_equal(y.numpy(), np.stack([ys[s] for s in ids]))
        seen += ids
    want = sorted(s for i, s in enumerate(sample_ids(N)) if i % 4)
    assert sorted(seen) == want and len(seen) == len(set(seen))


@pytest.mark.parametrize("in_memory", [False, True])
def test_order_is_a_function_of_seed_and_epoch(paired, in_memory):
    store, _, _ = paired
    kw = dict(batch_size=8, with_ids=True, in_memory=in_memory, buffer_rows=16)
    a, b = store.columns((X, Y), seed=3, **kw), store.columns((X, Y), seed=3, **kw)
    order = lambda ds, e: [s for _, _, ids in _epoch(ds, e) for s in ids]  # noqa: E731
    assert order(a, 0) == order(b, 0)
    assert order(a, 1) == order(b, 1)
    assert order(a, 0) != order(a, 1)
    assert order(a, 0) != order(store.columns((X, Y), seed=4, **kw), 0)
    assert sorted(order(a, 1)) == sorted(order(a, 0))


def test_no_shuffle_keeps_storage_order_and_drop_last_drops_the_tail(paired):
    store, _, _ = paired
    ds = store.columns((X, Y), shuffle=False, batch_size=7, with_ids=True, in_memory=False)
    ids = [s for _, _, b in _epoch(ds) for s in b]
    assert ids == sample_ids(N)
    ds = store.columns((X, Y), batch_size=7, drop_last=True, in_memory=False)
    assert [len(x) for x, _ in ds] == [7] * (N // 7)


@pytest.mark.slow
def test_two_dataloader_workers_split_the_epoch_without_overlap(paired):
    store, xs, _ = paired
    ds = store.columns((X, Y), batch_size=8, with_ids=True, in_memory=False, seed=1)
    assert sum(len(x) for x, _, _ in ds) == N  # this process maps the chunks; forked workers map their own
    ds.set_epoch(2)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    seen = []
    for x, _, ids in dl:
        np.testing.assert_array_equal(x.numpy(), np.stack([xs[s] for s in ids]))
        seen += ids
    assert sorted(seen) == sample_ids(N)
    again = [s for _, _, ids in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2) for s in ids]
    assert sorted(again) == sorted(seen) and again == seen  # same seed and epoch, same order


def test_ranks_split_the_epoch_too(paired):
    store, _, _ = paired
    parts = []
    for rank in range(3):
        ds = store.columns((X, Y), batch_size=4, with_ids=True, rank=rank, world_size=3, in_memory=False)
        parts.append([s for _, _, ids in ds for s in ids])
    assert sorted(sum(parts, [])) == sample_ids(N)
    assert all(parts)


def test_any_tuple_of_keys_and_stored_dtype(paired):
    store, xs, ys = paired
    ds = store.columns([Y, X, Y], batch_size=16, dtype="stored", with_ids=True)
    y1, x, y2, ids = next(iter(ds))
    assert y1.dtype == torch.float16 and x.dtype == torch.float32
    assert torch.equal(y1, y2)
    np.testing.assert_array_equal(y1.float().numpy(), np.stack([ys[s] for s in ids]))


def test_missing_keys_are_an_error_unless_skipped(paired):
    store, _, _ = paired
    rid = store.put_recipe({"partial": 1}, name="partial")
    write_shard(store, "partial", rid, sample_ids(N)[:10], keys=[("p2s", "completion_last", 2)])
    part = Key("partial", "p2s", "completion_last", 2)
    with pytest.raises(KeyNotFoundError, match="missing='skip'"):
        store.columns((X, part))
    ds = store.columns((X, part), missing="skip")
    assert ds.num_rows == 10 and ds.skipped == N - 10
    with pytest.raises(KeyNotFoundError, match="no committed rows"):
        store.columns((X, Key("in", "input", "prompt_last", 99)))


def test_the_dataset_pickles_small_and_records_its_snapshot(paired):
    store, _, _ = paired
    ds = store.columns((X, Y), in_memory=True)
    list(ds)  # loads the in-memory copy
    blob = pickle.dumps(ds)
    assert len(blob) < 50_000
    assert pickle.loads(blob).snapshot_id == ds.snapshot_id
    assert len(ds.snapshot_id) == 32


def test_bfloat16_columns_come_back_as_torch_bfloat16_bits(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    t = torch.randn(9, 6)
    with store.shard_writer("a", "r", sample_ids(9)) as w:
        w.write("pos", "completion_last", 0, t, "bfloat16")
    (x,) = next(iter(store.columns([Key("r", "pos", "completion_last", 0)], shuffle=False, batch_size=9, dtype="stored")))
    assert x.dtype == torch.bfloat16 and torch.equal(x, t.bfloat16())


def test_streaming_a_corrupted_chunk_raises_naming_shard_and_recipe(tmp_path):
    from l2s_data.errors import CorruptChunkError

    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"c": 1}, name="c")
    write_shard(store, "bad", rid, sample_ids(8), chunk_bytes=64)
    attempt = store.snapshot().shards["bad"]
    p = tmp_path / "s" / "shards" / "bad" / attempt / "p2s.completion_last.L2" / "c" / "3" / "0"
    data = bytearray(p.read_bytes())
    data[5] ^= 0x10
    p.write_bytes(bytes(data))
    ds = store.columns([Key("c", "p2s", "completion_last", 2)], in_memory=False)
    with pytest.raises(CorruptChunkError, match=f"shard bad, recipe {rid}"):
        list(ds)
