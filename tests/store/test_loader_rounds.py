"""The streaming loader's round buffers and its chunk-checksum policy (verify='once' / 'always')."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from l2s_data.errors import CorruptChunkError
from l2s_data.store import Key, Store
from l2s_data.store import _chunks

from .conftest import sample_ids, write_shard

K = Key("r", "p2s", "completion_last", 2)
N = 100


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """100 rows of width 8 (float32) in two shards, 7 rows per chunk: 16 chunks, two edge chunks."""
    root = tmp_path_factory.mktemp("rounds") / "store"
    store = Store.open(root, create=True)
    rid = store.put_recipe({"rounds": 1}, name="r")
    ids = sample_ids(N)
    rows = {}
    for j, part in enumerate((ids[:60], ids[60:])):
        d = write_shard(store, f"s{j}", rid, part, seed=j, chunk_bytes=7 * 8 * 4)
        rows.update(zip(part, d[("p2s", "completion_last", 2)]))
    return store, rows


@pytest.mark.parametrize("batch_size,buffer_rows", [(1, 7), (3, 16), (8, 16), (13, 30), (64, 7), (200, 50)])
def test_batches_cover_every_row_once_and_stay_valid_while_kept(chunked, batch_size, buffer_rows):
    store, rows = chunked
    ds = store.columns([K], batch_size=batch_size, buffer_rows=buffer_rows, in_memory=False,
                       with_ids=True, seed=5)
    kept = list(ds)  # every batch held at once: a reused buffer would overwrite earlier ones
    ids = [s for _, b in kept for s in b]
    assert sorted(ids) == sample_ids(N) and len(ids) == N
    assert all(len(x) == batch_size for x, _ in kept[:-1])
    for x, b in kept:
        np.testing.assert_array_equal(x.numpy(), np.stack([rows[s] for s in b]))


def test_rows_of_a_batch_are_shuffled_across_chunks(chunked):
    store, _ = chunked
    ds = store.columns([K], batch_size=10, buffer_rows=40, in_memory=False, with_ids=True, seed=0)
    batches = [b for _, b in ds]
    # 7 rows per chunk: a batch in storage order would span 2-3 chunks; shuffled ones span more.
    spans = [len({int(s[1:]) // 7 for s in b}) for b in batches]
    assert np.mean(spans) > 4
    ordered = [b for _, b in store.columns([K], batch_size=10, shuffle=False, in_memory=False, with_ids=True)]
    assert [s for b in ordered for s in b] == sample_ids(N)


def test_drop_last_drops_only_the_final_partial_batch(chunked):
    store, _ = chunked
    ds = store.columns([K], batch_size=9, buffer_rows=16, drop_last=True, in_memory=False, with_ids=True)
    sizes = [len(b) for _, b in ds]
    assert sizes == [9] * (N // 9)


def test_stored_dtype_batches_are_views_not_copies(chunked):
    """With dtype='stored' a batch shares the round buffer (no per-batch copy)."""
    store, _ = chunked
    ds = store.columns([K], batch_size=4, buffer_rows=16, in_memory=False, dtype="stored")
    it = iter(ds)
    (a,), (b,) = next(it), next(it)
    assert a.dtype == torch.float32
    assert b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()


def _count_crc(monkeypatch) -> list[int]:
    calls = [0]
    real = _chunks.google_crc32c.value

    def counted(data):
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(_chunks.google_crc32c, "value", counted)
    return calls


def _fresh_store(tmp_path, n=24):
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"v": 1}, name="r")
    write_shard(store, "v", rid, sample_ids(n), chunk_bytes=4 * 8 * 4)  # 4 rows per chunk
    return store, rid


def test_verify_once_hashes_each_chunk_once_per_process_and_always_every_read(tmp_path, monkeypatch):
    store, _ = _fresh_store(tmp_path)  # 6 chunks
    calls = _count_crc(monkeypatch)
    once = store.columns([K], batch_size=5, in_memory=False)
    assert once.verify == "once"
    for epoch in range(3):
        once.set_epoch(epoch)
        assert sum(len(x) for (x,) in once) == 24
    assert calls[0] == 6
    always = store.columns([K], batch_size=5, in_memory=False, verify="always")
    for epoch in range(2):
        always.set_epoch(epoch)
        list(always)
    assert calls[0] == 6 + 12
    with pytest.raises(ValueError, match="verify"):
        store.columns([K], verify="never")


def test_verify_once_still_catches_a_chunk_rewritten_after_it_was_checked(tmp_path):
    store, rid = _fresh_store(tmp_path)
    ds = store.columns([K], batch_size=5, in_memory=False)
    list(ds)  # every chunk checked and remembered
    attempt = store.snapshot().shards["v"]
    p = tmp_path / "s" / "shards" / "v" / attempt / "p2s.completion_last.L2" / "c" / "2" / "0"
    st = os.stat(p)
    data = bytearray(p.read_bytes())
    data[3] ^= 0x01
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime put back (ctime moves)
    with pytest.raises(CorruptChunkError, match=f"chunk 2 of .*shard v, recipe {rid}"):
        list(ds)


def test_a_corrupted_chunk_is_caught_on_its_first_read_with_verify_once(tmp_path):
    store, rid = _fresh_store(tmp_path)
    attempt = store.snapshot().shards["v"]
    p = tmp_path / "s" / "shards" / "v" / attempt / "p2s.completion_last.L2" / "c" / "4" / "0"
    data = bytearray(p.read_bytes())
    data[0] ^= 0x80
    p.write_bytes(bytes(data))
    for prefetch in (False, True):
        ds = store.columns([K], batch_size=5, in_memory=False, verify="once", prefetch=prefetch)
        with pytest.raises(CorruptChunkError, match=f"shard v, recipe {rid}"):
            list(ds)
