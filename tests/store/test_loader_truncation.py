"""Chunk files that change underneath a running loader: an error naming the chunk, never a
crash and never wrong rows."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

from l2s_data.errors import CorruptChunkError
from l2s_data.store import Key, Store

from .conftest import sample_ids, write_shard

K = Key("r", "p2s", "completion_last", 2)


def _stream_and_truncate(root: str, in_memory: bool, prefetch: bool, send) -> None:
    """Stream the store, truncate every chunk file to half its size after the first batch, and
    send what was seen. Runs in a forked child (see the test), which ends with ``os._exit``."""
    want = np.load(os.path.join(root, "..", "rows.npy"))
    store = Store.open(root)
    ds = store.columns([K], batch_size=16, seed=7, with_ids=True, dtype="stored", in_memory=in_memory,
                       prefetch=prefetch, buffer_rows=64)
    seen, wrong, error = 0, 0, None
    try:
        for i, (x, ids) in enumerate(ds):
            rows = [int(s[1:]) for s in ids]
            wrong += int((x.numpy() != want[rows]).any(axis=1).sum())
            seen += len(ids)
            if i == 0:
                for d, _, files in os.walk(os.path.join(root, "shards")):
                    for f in files:
                        p = os.path.join(d, f)
                        if os.sep + "c" + os.sep in p:
                            os.truncate(p, os.path.getsize(p) // 2)
    except CorruptChunkError as exc:
        error = str(exc)
    send.send({"seen": seen, "wrong": wrong, "error": error})


def _child(root: str, in_memory: bool, prefetch: bool, send) -> None:
    try:
        _stream_and_truncate(root, in_memory, prefetch, send)
    finally:
        os._exit(0)  # no test-session teardown in the child


@pytest.fixture
def big_chunks(tmp_path):
    """600 rows of 256 float32 in 64-row chunks (64 KiB files: several pages each)."""
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"t": 1}, name="r")
    d = write_shard(store, "t", rid, sample_ids(600), d=256, chunk_bytes=64 * 256 * 4)
    np.save(tmp_path / "rows.npy", d[("p2s", "completion_last", 2)])
    return tmp_path / "store", rid


@pytest.mark.slow
@pytest.mark.parametrize("in_memory,prefetch", [(False, False), (False, True), (True, False)])
def test_truncating_chunks_while_a_loader_streams_raises_naming_the_chunk(big_chunks, in_memory, prefetch):
    root, rid = big_chunks
    # In a forked child (the loaded modules shared, no interpreter to start), so that a signal
    # (SIGBUS from a mapped file cut short) shows as a dead child rather than killing the session.
    recv, send = mp.Pipe(duplex=False)
    child = mp.get_context("fork").Process(target=_child, args=(str(root), in_memory, prefetch, send))
    child.start()
    send.close()
    got = recv.recv() if recv.poll(300) else None
    child.join(300)
    assert child.exitcode == 0 and got is not None, f"the loader process died (exit {child.exitcode})"
    assert got["wrong"] == 0
    assert 16 <= got["seen"] < 600  # the rounds read before the cut were served, then it stopped
    assert got["error"] is not None
    assert f"(shard t, recipe {rid}) has 32770 bytes, expected 65540" in got["error"]
    assert "chunk " in got["error"] and "p2s.completion_last.L2" in got["error"]


def _small_store(tmp_path):
    """30 rows of 8 float32, 3 rows per chunk (96 bytes + crc): ten small chunk files."""
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"small": 1}, name="r")
    d = write_shard(store, "v", rid, sample_ids(30), chunk_bytes=3 * 8 * 4)
    attempt = store.snapshot().shards["v"]
    folder = tmp_path / "s" / "shards" / "v" / attempt / "p2s.completion_last.L2" / "c"
    return store, d[("p2s", "completion_last", 2)], lambda i: folder / str(i) / "0"


def _check_rows(batches, want) -> int:
    n = 0
    for x, ids in batches:
        np.testing.assert_array_equal(x.numpy(), want[[int(s[1:]) for s in ids]])
        n += len(ids)
    return n


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("cut", ["half", "zeros"])
def test_a_half_truncated_or_zeroed_small_chunk_never_yields_wrong_rows(tmp_path, in_memory, cut):
    store, want, chunk = _small_store(tmp_path)
    p = chunk(4)
    size = p.stat().st_size
    if cut == "half":
        p.write_bytes(p.read_bytes()[: size // 2])
    else:  # same size, rows zeroed, crc kept: what a file cut and re-extended looks like
        p.write_bytes(b"\0" * (size - 4) + p.read_bytes()[-4:])
    ds = store.columns([K], batch_size=4, buffer_rows=6, with_ids=True, in_memory=in_memory, seed=2)
    batches = []
    with pytest.raises(CorruptChunkError, match="chunk 4 of ") as err:
        for b in ds:
            batches.append(b)
    assert ("has 50 bytes, expected 100" if cut == "half" else "crc32c") in str(err.value)
    assert _check_rows(batches, want) < 30


def test_a_chunk_cut_after_its_epoch_stops_the_next_streamed_epoch_and_not_a_kept_copy(tmp_path):
    """Streaming reads again every epoch, so the cut chunk stops it; an in-memory copy was
    checked when it was read and keeps serving exactly those rows."""
    store, want, chunk = _small_store(tmp_path)
    streaming = store.columns([K], batch_size=4, with_ids=True, in_memory=False)
    kept = store.columns([K], batch_size=4, with_ids=True, in_memory=True)
    assert _check_rows(list(streaming), want) == 30 and _check_rows(list(kept), want) == 30
    p = chunk(7)
    p.write_bytes(p.read_bytes()[:50])
    streaming.set_epoch(1)
    kept.set_epoch(1)
    with pytest.raises(CorruptChunkError, match="chunk 7 of .*has 50 bytes"):
        list(streaming)
    assert _check_rows(list(kept), want) == 30
    kept.release()  # the copy is dropped, so the next epoch reads the files again
    with pytest.raises(CorruptChunkError, match="chunk 7 of "):
        list(kept)


@pytest.mark.parametrize("in_memory", [False, True])
def test_no_chunk_file_is_mapped_while_a_loader_runs(tmp_path, in_memory):
    store, want, _ = _small_store(tmp_path)
    ds = store.columns([K], batch_size=4, buffer_rows=6, with_ids=True, in_memory=in_memory)
    it = iter(ds)
    first = next(it)  # mid-epoch: a round is in the buffers
    with open("/proc/self/maps") as f:
        mapped = [line for line in f if "/shards/" in line]
    assert mapped == []
    assert _check_rows([first, *it], want) == 30
