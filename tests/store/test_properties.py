"""Hypothesis round trips: random shapes, dtypes, chunk and shard sizes, read back by key."""

from __future__ import annotations

import tempfile

import numpy as np
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2s_data.store import Key, Store
from l2s_data.store._chunks import load_array_info, read_chunk
from l2s_data.store.contract import float32_to_bfloat16_bits

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _expected(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return torch.from_numpy(a).bfloat16().float().numpy()
    return a.astype(dtype).astype(np.float32)


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 24))
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    shard_rows = draw(st.integers(max(1, n // 4), n))  # 1 to 4 shards: keeps the test fast
    chunk_bytes = draw(st.integers(1, 4 * d * 9))
    seed = draw(st.integers(0, 2**16))
    return n, d, dtype, shard_rows, chunk_bytes, seed


@SETTINGS
@given(layouts())
def test_any_layout_round_trips_by_key_and_through_the_loader(layout):
    n, d, dtype, shard_rows, chunk_bytes, seed = layout
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((n, d)) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
    ids = [f"id{i:03d}" for i in rng.permutation(n)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/s", create=True)
        rid = store.put_recipe({"seed": seed})
        for s in range(0, n, shard_rows):
            with store.shard_writer(f"sh{s}", rid, ids[s : s + shard_rows], chunk_bytes=chunk_bytes) as w:
                w.write("p2s", "completion_last", 3, a[s : s + shard_rows], dtype)
            assert w.won
        want = _expected(a, dtype)
        snap = store.snapshot()
        order = list(rng.permutation(n))
        got = snap.read(rid, "p2s", "completion_last", 3, [ids[i] for i in order])
        np.testing.assert_array_equal(got, want[order])
        ds = store.columns([Key(rid, "p2s", "completion_last", 3)], batch_size=int(rng.integers(1, 9)),
                           with_ids=True, in_memory=bool(rng.integers(2)), seed=seed)
        seen = {}
        for x, b in ds:
            seen.update(zip(b, x.numpy()))
        assert sorted(seen) == sorted(ids)
        for i, s in enumerate(ids):
            np.testing.assert_array_equal(seen[s], want[i])
        m = snap.rows()
        norms = np.array(m["norm"].to_pylist(), np.float32)
        rows = {sid: r for sid, r in zip(m["sample_id"].to_pylist(), range(m.num_rows))}
        np.testing.assert_allclose(norms[[rows[s] for s in ids]], np.linalg.norm(want, axis=1), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 12), st.integers(1, 200), st.sampled_from(["float32", "float16", "bfloat16"]))
def test_the_direct_chunk_reader_agrees_with_zarr_python(n, d, chunk_bytes, dtype):
    a = np.random.default_rng(n * 100 + d).standard_normal((n, d)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/s", create=True)
        with store.shard_writer("a", "r", [f"{i}" for i in range(n)], chunk_bytes=chunk_bytes) as w:
            w.write("neg", "sequence_last-1", 0, a, dtype)
        path = store.snapshot().rows()["array"][0].as_py()
        info = load_array_info(store.admin.backend, path)
        ours = np.concatenate([read_chunk(store.admin.backend, info, c) for c in range(info.n_chunks)])
        arr = zarr.open_array(f"{tmp}/s/{path}", mode="r")
        theirs = arr[...]
        assert theirs.dtype == ours.dtype and np.array_equal(theirs, ours)
        assert info.logical_dtype == dtype and arr.attrs["l2s"]["logical_dtype"] == dtype
        if dtype == "bfloat16":
            assert theirs.dtype == np.uint16


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64))
def test_numpy_bfloat16_rounding_matches_torch(values):
    a = np.array(values, np.float32)
    ours = float32_to_bfloat16_bits(a)
    torch_bits = torch.from_numpy(a).bfloat16().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, torch_bits)
