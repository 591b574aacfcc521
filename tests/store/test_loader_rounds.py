"""The loader's rounds: coverage, shuffling, reused buffers, both paths giving the same batches,
and a crc32c check on every chunk read."""

from __future__ import annotations

import os

import numpy as np
import pytest

from l2s_data.errors import CorruptChunkError, EmptySelectionError
from l2s_data.store import Key, Store
from l2s_data.store import _chunks

from .conftest import rows as random_rows
from .conftest import sample_ids, write_shard

K = Key("r", "p2s", "completion_last", 2)
N = 100


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """100 rows of width 8 (float32) in two shards (60 + 40), 7 rows per chunk: 9 + 6 chunks, two edge chunks."""
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


def test_a_batch_buffer_is_reused_once_the_caller_drops_its_batch(chunked):
    """Batches are copies into a few recycled buffers: dropped batches free theirs for reuse,
    and a batch still held is never overwritten (the coverage test above keeps them all)."""
    store, rows = chunked
    ds = store.columns([K], batch_size=4, buffer_rows=16, in_memory=False, dtype="stored", with_ids=True)
    ptrs = set()
    for x, ids in ds:  # the previous batch is released when the loop variable is rebound
        ptrs.add(x.data_ptr())
        np.testing.assert_array_equal(x.numpy(), np.stack([rows[s] for s in ids]))
    assert 1 <= len(ptrs) <= 3  # 25 batches from at most three buffers
    kept = [x for x, _ in ds]
    assert len({x.data_ptr() for x in kept}) == len(kept)


def _epochs(ds, n=3):
    out = []
    for epoch in range(n):
        ds.set_epoch(epoch)
        out.append([(tuple(t.numpy().tobytes() for t in b[:-1]), tuple(b[-1])) for b in ds])
    return out


@pytest.mark.parametrize("prefetch", [False, True])
def test_the_in_memory_path_gives_the_streaming_batches_in_every_epoch(tmp_path, prefetch):
    """Two keys written together (read straight into the buffers), with edge chunks: the
    in-memory path (first epoch read while served, later epochs from memory) and the streaming
    path yield the same batches, epoch after epoch, and they hold the rows that were written."""
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"w": 1}, name="r")
    keys = (("p2s", "completion_last", 2), ("input", "prompt_last", 1))
    ids = sample_ids(90)
    written = {}
    for j, part in enumerate((ids[:37], ids[37:])):  # 16-row chunks: 3 + 4, edge chunks of 5 and 5 rows
        d = write_shard(store, f"s{j}", rid, part, d=12, keys=keys, seed=j, dtype="float16", chunk_bytes=16 * 12 * 2)
        for k, a in d.items():
            written.update({(k, s): row for s, row in zip(part, a.astype(np.float16))})
    cols = [Key(rid, *k) for k in keys]
    kw = dict(batch_size=7, buffer_rows=40, with_ids=True, dtype="stored", prefetch=prefetch)
    streamed = _epochs(store.columns(cols, in_memory=False, **kw))
    kept = store.columns(cols, in_memory=True, **kw)
    assert _epochs(kept) == streamed
    assert kept._memory is not None and kept._memory.loaded.all()
    assert streamed[0] != streamed[1]  # epochs differ
    for epoch in streamed:
        assert sorted(s for _, b in epoch for s in b) == ids
        for (xb, yb), b in epoch:
            np.testing.assert_array_equal(np.frombuffer(xb, np.float16).reshape(-1, 12),
                                          np.stack([written[(keys[0], s)] for s in b]))
            np.testing.assert_array_equal(np.frombuffer(yb, np.float16).reshape(-1, 12),
                                          np.stack([written[(keys[1], s)] for s in b]))


def test_a_where_selection_and_keys_chunked_differently_give_the_same_batches_on_both_paths(tmp_path):
    """A ``where`` that picks some rows of each chunk reads whole chunks and keeps those rows;
    a key whose chunks do not line up with the first key's is gathered through the chunk cache."""
    from .conftest import tables

    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"w": 2}, name="r")
    ids = sample_ids(64)
    samples, memberships = tables(ids)
    store.put("samples", samples, memberships=memberships)
    x = random_rows(64, 12, 1).astype(np.float16)
    y = random_rows(64, 12, 2)  # float32: half as many rows per chunk as x
    with store.shard_writer("s0", rid, ids, chunk_bytes=16 * 12 * 2) as w:
        w.write("input", "prompt_last", 1, x, "float16")
        w.write("p2s", "completion_last", 2, y, "float32")
    cols = [Key(rid, "input", "prompt_last", 1), Key(rid, "p2s", "completion_last", 2)]
    kw = dict(where="split = 'train'", batch_size=5, buffer_rows=20, with_ids=True, dtype="stored")
    streamed = _epochs(store.columns(cols, in_memory=False, **kw), 2)
    assert _epochs(store.columns(cols, in_memory=True, **kw), 2) == streamed
    train = [s for i, s in enumerate(ids) if i % 4]
    assert sorted(s for _, b in streamed[1] for s in b) == train
    by_id = dict(zip(ids, range(64)))
    for (xb, yb), b in streamed[0]:
        np.testing.assert_array_equal(np.frombuffer(xb, np.float16).reshape(-1, 12), x[[by_id[s] for s in b]])
        np.testing.assert_array_equal(np.frombuffer(yb, np.float32).reshape(-1, 12), y[[by_id[s] for s in b]])


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_where_that_selects_no_sample_is_a_clear_error(chunked, in_memory):
    store, _ = chunked
    from .conftest import tables

    samples, memberships = tables(sample_ids(N))

    store.put("samples", samples, memberships=memberships)
    with pytest.raises(EmptySelectionError, match="selects no sample") as err:
        store.columns([K], where="split = 'nowhere'", in_memory=in_memory)
    assert "split = 'nowhere'" in str(err.value) and isinstance(err.value, ValueError)


def test_skipping_every_sample_is_the_same_error(chunked):
    store, _ = chunked
    rid = store.put_recipe({"other": 1}, name="other")
    write_shard(store, "other", rid, sample_ids(5, prefix="t"))
    with pytest.raises(EmptySelectionError, match="5 selected sample"):
        store.columns([Key("other", "p2s", "completion_last", 2), K], missing="skip")


def _count_crc(monkeypatch) -> list[int]:
    calls = [0]
    real = _chunks.crc32c

    def counted(data, value=0):
        calls[0] += 1
        return real(data, value)

    monkeypatch.setattr(_chunks, "crc32c", counted)
    return calls


def _fresh_store(tmp_path, n=24):
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"v": 1}, name="r")
    write_shard(store, "v", rid, sample_ids(n), chunk_bytes=4 * 8 * 4)  # 4 rows per chunk
    return store, rid


def _chunk_path(store, tmp_path, i):
    attempt = store.snapshot().shards["v"]
    return tmp_path / "s" / "shards" / "v" / attempt / "p2s.completion_last.L2" / "c" / str(i) / "0"


def test_every_chunk_read_is_checked_and_memory_is_read_once(tmp_path, monkeypatch):
    store, _ = _fresh_store(tmp_path)  # 6 chunks
    calls = _count_crc(monkeypatch)
    streaming = store.columns([K], batch_size=5, in_memory=False)
    for epoch in range(3):
        streaming.set_epoch(epoch)
        assert sum(len(x) for (x,) in streaming) == 24
    assert calls[0] == 6 * 3
    kept = store.columns([K], batch_size=5, in_memory=True)
    for epoch in range(3):
        kept.set_epoch(epoch)
        assert sum(len(x) for (x,) in kept) == 24
    assert calls[0] == 6 * 3 + 6
    with pytest.raises(TypeError, match="verify"):  # no option turns the checks off
        store.columns([K], verify="never")


def test_a_chunk_rewritten_after_it_was_read_is_caught_on_the_next_read(tmp_path):
    store, rid = _fresh_store(tmp_path)
    ds = store.columns([K], batch_size=5, in_memory=False)
    list(ds)
    p = _chunk_path(store, tmp_path, 2)
    st = os.stat(p)
    data = bytearray(p.read_bytes())
    data[3] ^= 0x01
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    with pytest.raises(CorruptChunkError, match=f"chunk 2 of .*shard v, recipe {rid}.*crc32c"):
        list(ds)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("in_memory", [False, True])
def test_a_corrupted_chunk_is_caught_on_its_first_read(tmp_path, prefetch, in_memory):
    store, rid = _fresh_store(tmp_path)
    p = _chunk_path(store, tmp_path, 4)
    data = bytearray(p.read_bytes())
    data[0] ^= 0x80
    p.write_bytes(bytes(data))
    ds = store.columns([K], batch_size=5, in_memory=in_memory, prefetch=prefetch)
    with pytest.raises(CorruptChunkError, match=f"chunk 4 of .*shard v, recipe {rid}"):
        list(ds)


def test_a_chunk_file_that_grew_is_refused(tmp_path):
    store, rid = _fresh_store(tmp_path)
    p = _chunk_path(store, tmp_path, 1)
    want = p.stat().st_size
    with open(p, "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(CorruptChunkError, match=f"chunk 1 of .*has {want + 8} bytes, expected {want}"):
        list(store.columns([K], batch_size=5, in_memory=False))


def test_chunk_reader_matches_zarr_python_on_an_edge_chunk(tmp_path):
    """The direct reader gives the rows zarr-python reads, edge padding excluded."""
    import zarr

    store, _ = _fresh_store(tmp_path, n=22)  # 6 chunks, the last one holds 2 rows
    snap = store.snapshot()
    path = snap.key_rows("r", "p2s", "completion_last", 2)["array"][0].as_py()
    info = snap.array_info(path)
    z = zarr.open_array(store=store.admin.backend.zarr_store(path, read_only=True), mode="r")
    reader = _chunks.ChunkReader(store.admin.backend)
    got = np.concatenate([reader.read(info, i) for i in range(info.n_chunks)])
    np.testing.assert_array_equal(got, z[:])
    with pytest.raises(ValueError, match="destination"):
        reader.into(info, 5, np.empty((4, 8), np.float32))


@pytest.mark.slow
def test_in_memory_dataloader_workers_give_the_streaming_batches(chunked):
    """Each worker keeps its own copy (read during the first epoch it serves); with
    persistent workers later epochs read nothing, and every epoch matches the streaming path."""
    import torch

    store, rows = chunked
    kw = dict(batch_size=6, buffer_rows=14, with_ids=True, dtype="stored", seed=4)
    kept = store.columns([K], in_memory=True, **kw)
    streamed = store.columns([K], in_memory=False, **kw)
    dl_kept = torch.utils.data.DataLoader(kept, batch_size=None, num_workers=2, persistent_workers=True)
    dl_streamed = torch.utils.data.DataLoader(streamed, batch_size=None, num_workers=2)
    for epoch in range(2):
        kept.set_epoch(epoch)
        streamed.set_epoch(epoch)
        got = [(x.numpy().tobytes(), tuple(ids)) for x, ids in dl_kept]
        assert got == [(x.numpy().tobytes(), tuple(ids)) for x, ids in dl_streamed]
        assert sorted(s for _, ids in got for s in ids) == sample_ids(N)
        for x, ids in got:
            np.testing.assert_array_equal(np.frombuffer(x, np.float32).reshape(-1, 8), np.stack([rows[s] for s in ids]))


def test_a_key_stored_with_two_widths_is_refused_by_name(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"odd": 1}, name="r")
    write_shard(store, "a", rid, sample_ids(6), d=8)
    write_shard(store, "b", rid, sample_ids(6, prefix="t"), d=12)
    from l2s_data.errors import StoreError

    with pytest.raises(StoreError, match=r"different widths.*\(8 x float32\).*\(12 x float32\)"):
        store.columns([K])


def test_a_remote_store_reads_whole_chunk_files_with_the_same_batches_and_checks(tmp_path):
    """memory:// goes through fsspec (no preadv): same batches as a local copy of the same rows,
    and a damaged chunk is caught there too."""
    import uuid

    import fsspec

    url = f"memory://loader-{uuid.uuid4().hex}"
    remote, local = Store.open(url, create=True), Store.open(tmp_path / "local", create=True)
    for s in (remote, local):
        rid = s.put_recipe({"remote": 1}, name="r")
        write_shard(s, "m", rid, sample_ids(22), chunk_bytes=4 * 8 * 4)  # edge chunk of 2 rows
    kw = dict(batch_size=5, buffer_rows=8, with_ids=True, seed=9)
    for in_memory in (False, True):
        assert _epochs(remote.columns([K], in_memory=in_memory, **kw), 2) == _epochs(local.columns([K], **kw), 2)
    fs = fsspec.filesystem("memory")
    attempt = remote.snapshot().shards["m"]
    p = f"{url[len('memory://'):]}/shards/m/{attempt}/p2s.completion_last.L2/c/1/0"
    data = bytearray(fs.cat_file(p))
    data[7] ^= 0x04
    fs.pipe_file(p, bytes(data))
    with pytest.raises(CorruptChunkError, match="chunk 1 of .*crc32c"):
        list(remote.columns([K], **kw))
