"""The direct Zarr writer produces exactly zarr-python's files, and zarr-python reads them back."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from l2s_data.errors import StoreError
from l2s_data.store import Store
from l2s_data.store._chunks import load_array_info, read_chunk
from l2s_data.store.contract import STORED_DTYPE, attempt_dir
from l2s_data.store.writer import ShardWriter

ATTEMPT = "0123456789abcdef0123456789abcdef"
KEYS = [("input", "prompt_last", 0), ("p2s", "completion_last", 13), ("neg", "sequence_last-1", 2)]


def _write(url: str, writer: str, a: np.ndarray, dtype: str, chunk_bytes: int) -> Store:
    """One shard of ``len(KEYS)`` arrays written by ``writer``, with a fixed attempt id."""
    store = Store.open(url, create=True)
    w = ShardWriter(store.admin.backend, "s-1", "rid", [f"id{i}" for i in range(a.shape[0])],
                    chunk_bytes=chunk_bytes, zarr_writer=writer)
    # The attempt id is random per writer and is in every zarr.json: pin it to compare bytes.
    w.attempt, w.dir = ATTEMPT, attempt_dir("s-1", ATTEMPT)
    with w:
        for j, k in enumerate(KEYS):
            w.write(*k, a * (j + 1), dtype)
    assert w.won
    return store


def _files(store: Store) -> dict[str, bytes]:
    """Every file of the attempt folder, by path relative to it, except attempt.json."""
    b = store.admin.backend
    root = b.path(attempt_dir("s-1", ATTEMPT)).rstrip("/")
    out = {}
    for p in b.fs.find(root):
        rel = p[len(root):].lstrip("/") if p.startswith(root) else p.split(ATTEMPT + "/", 1)[1]
        if rel not in ("attempt.json", "claim"):  # host, pid and start time: not Zarr, written the same way by both
            out[rel] = b.fs.cat_file(p)
    return out


def _data(n: int, d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    # Values whose bytes are easy to get wrong: infinity, negative zero, a subnormal, NaN.
    special = np.array([np.inf, -0.0, 1e-40, np.nan], np.float32)
    a.flat[-min(a.size, 4):] = special[: min(a.size, 4)]
    return a


# (n, D, chunk_rows): a partial last chunk, exact multiples, one chunk, one row per chunk.
SHAPES = [(10, 3, 4), (9, 4, 3), (1, 1, 1), (64, 96, 64), (7, 5, 7), (5, 8, 1), (33, 16, 8)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("n,d,chunk_rows", SHAPES)
def test_direct_files_are_byte_identical_to_zarr_python(tmp_path, dtype, n, d, chunk_rows):
    a = _data(n, d, n * 31 + d)
    chunk_bytes = chunk_rows * d * STORED_DTYPE[dtype].itemsize
    ours = _files(_write(str(tmp_path / "direct"), "direct", a, dtype, chunk_bytes))
    theirs = _files(_write(str(tmp_path / "zarr"), "zarr-python", a, dtype, chunk_bytes))
    n_chunks = -(-n // chunk_rows)
    assert sorted(ours) == sorted(theirs)
    assert len(ours) == 1 + len(KEYS) * (1 + n_chunks)  # root group + per array: zarr.json + chunks
    for rel in sorted(theirs):
        if rel.endswith("zarr.json"):
            assert json.loads(ours[rel]) == json.loads(theirs[rel]), rel
        assert ours[rel] == theirs[rel], rel
    # zarr-python opens the direct writer's arrays and reads the same values and attributes.
    for j, (view, pos, layer) in enumerate(KEYS):
        rel = f"{tmp_path}/direct/shards/s-1/{ATTEMPT}/{view}.{pos}.L{layer}"
        arr = zarr.open_array(rel, mode="r")
        ref = zarr.open_array(rel.replace("/direct/", "/zarr/"), mode="r")
        got = arr[...]
        assert got.dtype == STORED_DTYPE[dtype] and got.shape == (n, d) and arr.chunks == (chunk_rows, d)
        assert np.array_equal(got.view(np.uint8), ref[...].view(np.uint8))
        assert dict(arr.attrs) == dict(ref.attrs) and arr.attrs["l2s"]["logical_dtype"] == dtype


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_fsspec_backend_direct_files_equal_zarr_python(dtype):
    """A non-local store (memory://) takes the batched-put path; same bytes as zarr-python."""
    a = _data(11, 6, 7)
    chunk_bytes = 4 * 6 * STORED_DTYPE[dtype].itemsize
    tag = f"{dtype}-{np.random.default_rng().integers(1 << 30)}"
    s_direct = _write(f"memory://dw-{tag}/direct", "direct", a, dtype, chunk_bytes)
    s_zarr = _write(f"memory://dw-{tag}/zarr", "zarr-python", a, dtype, chunk_bytes)
    ours, theirs = _files(s_direct), _files(s_zarr)
    assert ours == theirs and len(ours) == 1 + len(KEYS) * 4
    got = s_direct.snapshot().read("rid", "input", "prompt_last", 0, [f"id{i}" for i in range(11)])
    want = s_zarr.snapshot().read("rid", "input", "prompt_last", 0, [f"id{i}" for i in range(11)])
    np.testing.assert_array_equal(got, want)
    arr = zarr.open_array(s_direct.admin.backend.zarr_store(f"shards/s-1/{ATTEMPT}/input.prompt_last.L0", read_only=True),
                          mode="r")
    ref = zarr.open_array(s_zarr.admin.backend.zarr_store(f"shards/s-1/{ATTEMPT}/input.prompt_last.L0", read_only=True),
                          mode="r")
    assert np.array_equal(arr[...].view(np.uint8), ref[...].view(np.uint8))


def test_threaded_direct_writes_read_back_through_the_direct_reader(tmp_path):
    """The worker writes one shard's keys from several threads: every array is whole."""
    store = Store.open(tmp_path / "s", create=True)
    n, d = 20, 32
    ids = [f"x{i}" for i in range(n)]
    want = {layer: _data(n, d, layer) for layer in range(24)}
    with store.shard_writer("t", "rid", ids, chunk_bytes=6 * d * 2) as w:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda layer: w.write("input", "prompt_last", layer, want[layer], "float16"), want))
    assert w.zarr_writer == "direct"
    snap = store.snapshot()
    for layer, a in want.items():
        path = f"{w.dir}/input.prompt_last.L{layer}"
        info = load_array_info(store.admin.backend, path)
        got = np.concatenate([read_chunk(store.admin.backend, info, c) for c in range(info.n_chunks)])
        np.testing.assert_array_equal(got, a.astype(np.float16))
        np.testing.assert_array_equal(zarr.open_array(store.admin.backend.path(path), mode="r")[...], got)
        np.testing.assert_array_equal(snap.read("rid", "input", "prompt_last", layer, ids),
                                      a.astype(np.float16).astype(np.float32))


def test_the_writer_is_selectable_and_an_unknown_one_is_refused(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "s", create=True)
    monkeypatch.setenv("L2S_ZARR_WRITER", "zarr-python")
    assert store.shard_writer("a", "rid", ["x"]).zarr_writer == "zarr-python"
    assert ShardWriter(store.admin.backend, "a", "rid", ["x"], zarr_writer="direct").zarr_writer == "direct"
    monkeypatch.setenv("L2S_ZARR_WRITER", "zarrr")
    with pytest.raises(StoreError, match="zarrr"):
        store.shard_writer("a", "rid", ["x"])
    monkeypatch.delenv("L2S_ZARR_WRITER")
    assert store.shard_writer("a", "rid", ["x"]).zarr_writer == "direct"
