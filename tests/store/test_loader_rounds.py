"""The streaming loader's round buffers and its chunk-checksum policy (verify='once' / 'always')."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from l2s_data.errors import CorruptChunkError
from l2s_data.store import Key, Store
from l2s_data.store import _chunks, _vmap, loader

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
@pytest.mark.parametrize("verify", ["once", "always"])
def test_chunks_mapped_into_one_window_give_the_same_batches_as_copied_rounds(tmp_path, monkeypatch, prefetch, verify):
    """The window paths (chunk files mapped side by side, one take per batch: kept mapped across
    epochs with verify='once', remapped per round with 'always') and the copy path (rounds
    concatenated in memory) are ways to the same batches, in the same order."""
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"w": 1}, name="r")
    keys = (("p2s", "completion_last", 2), ("input", "prompt_last", 1))
    ids = sample_ids(90)
    for j, part in enumerate((ids[:37], ids[37:])):  # 16-row chunks: 3 + 4, edge chunks of 5 rows
        write_shard(store, f"s{j}", rid, part, d=12, keys=keys, seed=j, dtype="float16", chunk_bytes=16 * 12 * 2)
    cols = [Key(rid, *k) for k in keys]
    placed = [0]
    real_place = loader.place_chunk

    def counted(*a, **kw):
        placed[0] += 1
        return real_place(*a, **kw)

    monkeypatch.setattr(loader, "place_chunk", counted)
    kw = dict(batch_size=7, buffer_rows=40, in_memory=False, with_ids=True, dtype="stored",
              prefetch=prefetch, verify=verify)
    ds = store.columns(cols, **kw)
    mapped = _epochs(ds)
    # keys x chunks, mapped once and kept (once), or every epoch (always)
    assert placed[0] == 2 * 7 * (1 if verify == "once" else 3)
    monkeypatch.setattr(_vmap, "available", lambda: False)
    copied = _epochs(store.columns(cols, **kw))
    assert placed[0] == 2 * 7 * (1 if verify == "once" else 3)
    assert mapped == copied
    assert mapped[0] != mapped[1]  # and epochs differ
    assert sorted(s for _, b in mapped[2] for s in b) == ids


def test_resident_chunks_are_stat_checked_each_epoch_and_released_on_request(chunked, monkeypatch):
    store, _ = chunked
    placed, stats = [0], [0]
    real_place, real_ident = loader.place_chunk, loader.chunk_identity
    monkeypatch.setattr(loader, "place_chunk", lambda *a, **kw: (placed.__setitem__(0, placed[0] + 1), real_place(*a, **kw))[1])
    monkeypatch.setattr(loader, "chunk_identity", lambda *a: (stats.__setitem__(0, stats[0] + 1), real_ident(*a))[1])
    ds = store.columns([K], batch_size=8, in_memory=False)
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert sum(len(x) for (x,) in ds) == N
    assert placed[0] == 15 and stats[0] == 2 * 15  # 15 chunks mapped once, stat'ed in epochs 2 and 3
    ds.release()
    assert sum(len(x) for (x,) in ds) == N
    assert placed[0] == 30


def test_windows_serve_a_where_selection_and_keys_chunked_differently_fall_back(tmp_path, monkeypatch):
    """A ``where`` that picks some rows of each chunk still maps whole chunks (and takes those
    rows); a key whose chunks do not line up with the first key's is copied instead. Both give
    the batches the copy path gives."""
    from .conftest import tables

    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"w": 2}, name="r")
    ids = sample_ids(64)
    store.put_samples(*tables(ids))
    x = random_rows(64, 12, 1).astype(np.float16)
    y = random_rows(64, 12, 2)  # float32: half as many rows per chunk as x
    with store.shard_writer("s0", rid, ids, chunk_bytes=16 * 12 * 2) as w:
        w.write("input", "prompt_last", 1, x, "float16")
        w.write("p2s", "completion_last", 2, y, "float32")
    cols = [Key(rid, "input", "prompt_last", 1), Key(rid, "p2s", "completion_last", 2)]
    placed = []
    real_place = loader.place_chunk
    monkeypatch.setattr(loader, "place_chunk", lambda b, info, *a, **kw: (placed.append(info.path), real_place(b, info, *a, **kw))[1])
    kw = dict(where="split = 'train'", batch_size=5, buffer_rows=20, in_memory=False, with_ids=True, dtype="stored")
    mapped = _epochs(store.columns(cols, **kw), 2)
    assert len(placed) == 4 and all("input" in p for p in placed)  # key 0's 4 chunks, mapped once
    monkeypatch.setattr(_vmap, "available", lambda: False)
    assert _epochs(store.columns(cols, **kw), 2) == mapped
    train = [s for i, s in enumerate(ids) if i % 4]
    assert sorted(s for _, b in mapped[1] for s in b) == train
    by_id = dict(zip(ids, range(64)))
    for (xb, yb), b in mapped[0]:
        np.testing.assert_array_equal(np.frombuffer(xb, np.float16).reshape(-1, 12), x[[by_id[s] for s in b]])
        np.testing.assert_array_equal(np.frombuffer(yb, np.float32).reshape(-1, 12), y[[by_id[s] for s in b]])


def test_a_mapping_that_fails_midway_falls_back_to_copying_with_the_same_batches(chunked, monkeypatch):
    """If the kernel refuses a mapping (say, the process is out of map slots), the round is
    copied instead: nothing is lost or repeated, and the order is the one windows give."""
    store, rows = chunked
    kw = dict(batch_size=6, buffer_rows=21, in_memory=False, with_ids=True, dtype="stored", seed=3)
    want = _epochs(store.columns([K], **kw), 1)
    real_place, calls = _vmap.Window.place, [0]

    def flaky(self, slot, fd, nbytes):
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(12, "Cannot allocate memory")
        return real_place(self, slot, fd, nbytes)

    monkeypatch.setattr(_vmap.Window, "place", flaky)
    got = _epochs(store.columns([K], **kw), 1)
    assert calls[0] == 5  # the fifth mapping failed, and no window was tried after it
    assert got == want
    assert sorted(s for _, b in got[0] for s in b) == sample_ids(N)


def _mapped_in(lo: int, hi: int) -> int:
    """How many of this process's mappings lie in [lo, hi)."""
    n = 0
    with open("/proc/self/maps") as f:
        for line in f:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            n += start < hi and end > lo
    return n


def test_mapped_chunks_go_with_the_dataset_or_on_release(chunked):
    """Resident mappings are the dataset's: release() or dropping the dataset unmaps them, so
    a sweep that builds a loader per trial does not pile up mappings."""
    store, _ = chunked
    for drop in ("release", "del"):
        ds = store.columns([K], batch_size=8, in_memory=False)
        assert sum(len(x) for (x,) in ds) == N
        w = ds._resident[1][0].window
        lo, hi = w.addr, w.addr + w.nbytes
        del w
        assert _mapped_in(lo, hi) >= 15  # one per chunk file
        if drop == "release":
            ds.release()
        else:
            del ds  # reference counting alone frees it: no cycle holds the windows
        assert _mapped_in(lo, hi) == 0


def test_a_window_holds_chunks_that_are_not_whole_pages(tmp_path):
    """Slots are whole pages and whole rows: 7-row chunks of 12 float32 (336 bytes) still line up."""
    w = _vmap.Window(3, _vmap.slot_rows(7, 48), 12, np.float32)
    try:
        assert w.slot_rows * 48 % 4096 == 0 and w.slot_rows >= 7
        data = [np.random.default_rng(i).standard_normal((7, 12)).astype(np.float32) for i in range(3)]
        for j, a in enumerate(data):
            p = tmp_path / f"c{j}"
            p.write_bytes(a.tobytes() + b"crc!")
            fd = os.open(p, os.O_RDONLY)
            try:
                w.place(j, fd, a.nbytes)
            finally:
                os.close(fd)
        v = w.view()
        for j, a in enumerate(data):
            np.testing.assert_array_equal(v[j * w.slot_rows : j * w.slot_rows + 7], a)
        p = tmp_path / "c0"
        p.write_bytes(data[2].tobytes() + b"crc!")  # a new file over slot 0 replaces the old
        fd = os.open(p, os.O_RDONLY)
        w.place(0, fd, data[2].nbytes)
        os.close(fd)
        np.testing.assert_array_equal(v[:7], data[2])
        with pytest.raises(ValueError, match="slot 3 of 3"):
            w.place(3, 0, 16)
    finally:
        w.close()
    with pytest.raises(ValueError, match="closed"):
        w.view()


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
