"""Rows are checked where they are served: a chunk whose bytes do not match the manifest's
per-row checksums is never returned, even when it carries a valid crc32c of its own.

Reproduced against the previous store: same-size garbage with a recomputed crc32c was served
as data in 3 of 4 trials, and two swapped chunk files of one array in 2 of 4; the loader only
checked each chunk's own crc.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l2s_data.errors import CorruptChunkError
from l2s_data.store import Key, Store
from l2s_data.store._chunks import chunk_crcs, load_array_info
from l2s_data.store.contract import crc32c

from .conftest import sample_ids, tables, write_shard

KEY = ("p2s", "completion_last", 2)


def _store(tmp_path, url: str | None = None, n: int = 40) -> tuple[Store, str, list[str]]:
    store = Store.open(url or tmp_path / "store", create=True)
    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(n)
    samples, memberships = tables(ids)
    store.put("samples", samples, memberships=memberships)
    write_shard(store, "s-0", rid, ids, keys=(KEY, ("input", "prompt_last", 1)), chunk_bytes=8 * 4 * 8)
    return store, rid, ids


def _chunks(store: Store) -> list[str]:
    path = store.snapshot().rows()["array"][0].as_py()
    return sorted(f"{path}/c/{i}/0" for i in range(load_array_info(store.admin.backend, path).n_chunks))


def _forge(store: Store, rel: str, seed: int = 1) -> None:
    """Replace a chunk file by same-size garbage that ends in its own valid crc32c."""
    size = len(store.admin.backend.read_bytes(rel))
    body = np.random.default_rng(seed).standard_normal(size // 4).astype(np.float32).tobytes()[: size - 4]
    store.admin.backend.write_bytes(rel, body + crc32c(body).to_bytes(4, "little"))


def _swap(store: Store, a: str, b: str) -> None:
    da, db = store.admin.backend.read_bytes(a), store.admin.backend.read_bytes(b)
    store.admin.backend.write_bytes(a, db)
    store.admin.backend.write_bytes(b, da)


def _epoch(store: Store, rid: str, **kw) -> list:
    ds = store.columns([Key(rid, *KEY)], batch_size=4, seed=0, **kw)
    return [b for b in ds]


PATHS = [
    {"in_memory": False},
    {"in_memory": True},
    {"in_memory": False, "where": "split = 'train'"},  # rows picked out of a chunk
    {"in_memory": False, "prefetch": False},
]


@pytest.mark.parametrize("kw", PATHS, ids=["stream", "memory", "where", "no-prefetch"])
def test_a_chunk_replaced_with_a_valid_crc_is_never_served(tmp_path, kw):
    store, rid, ids = _store(tmp_path)
    chunks = _chunks(store)
    _forge(store, chunks[1])
    with pytest.raises(CorruptChunkError, match="manifest's checksums"):
        _epoch(store, rid, **kw)
    with pytest.raises(CorruptChunkError):
        store.snapshot().read(rid, *KEY, ids)
    assert any(p.what.endswith("c/1/0") for p in store.admin.verify())


@pytest.mark.parametrize("kw", PATHS[:2], ids=["stream", "memory"])
def test_two_swapped_chunk_files_of_one_array_are_never_served(tmp_path, kw):
    store, rid, ids = _store(tmp_path)
    chunks = _chunks(store)
    _swap(store, chunks[0], chunks[2])
    with pytest.raises(CorruptChunkError, match="manifest's checksums"):
        _epoch(store, rid, **kw)
    with pytest.raises(CorruptChunkError):
        store.snapshot().read(rid, *KEY, ids[:1])


def test_a_forged_chunk_on_an_object_store_is_never_served(tmp_path):
    store, rid, ids = _store(tmp_path, url=f"memory://rowcheck-{tmp_path.name}")
    _forge(store, _chunks(store)[0])
    with pytest.raises(CorruptChunkError, match="manifest's checksums"):
        _epoch(store, rid, in_memory=False)


def test_keys_gathered_across_chunks_are_checked_too(tmp_path):
    """A second key stored in another order is read through the chunk cache: checked as well."""
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(24)
    write_shard(store, "s-0", rid, ids, keys=(KEY,), chunk_bytes=8 * 4 * 8)
    write_shard(store, "s-1", rid, ids[::-1][:12], keys=(("input", "prompt_last", 1),), chunk_bytes=8 * 4 * 4)
    write_shard(store, "s-2", rid, ids[::-1][12:], keys=(("input", "prompt_last", 1),), chunk_bytes=8 * 4 * 4)
    snap = store.snapshot()
    other = [a for a in snap.rows()["array"].unique().to_pylist() if "/s-1/" in a][0]
    _forge(store, f"{other}/c/1/0")
    ds = store.columns([Key(rid, *KEY), Key(rid, "input", "prompt_last", 1)], batch_size=4, in_memory=False)
    with pytest.raises(CorruptChunkError, match="manifest's checksums"):
        list(ds)


def test_an_intact_store_serves_every_row_unchanged(tmp_path):
    store, rid, ids = _store(tmp_path)
    got = np.concatenate([np.asarray(b[0]) for b in _epoch(store, rid, in_memory=False)])
    want = store.snapshot().read(rid, *KEY, ids)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))


@pytest.mark.parametrize("n,d,chunk_rows,dtype", [(1, 1, 1, "float32"), (7, 3, 2, "float16"), (40, 8, 8, "bfloat16"),
                                                  (33, 16, 32, "float32"), (5, 4096, 1, "float16")])
def test_chunk_crcs_from_row_checksums_equal_each_chunk_files_crc(tmp_path, n, d, chunk_rows, dtype):
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"r": 1})
    itemsize = 4 if dtype == "float32" else 2
    write_shard(store, "s", rid, sample_ids(n), d=d, dtype=dtype, chunk_bytes=chunk_rows * d * itemsize)
    t = store.snapshot().rows()
    info = load_array_info(store.admin.backend, t["array"][0].as_py())
    assert info.chunk_rows == chunk_rows
    sums = np.array([int(x, 16) for x in t.sort_by("row")["checksum"].to_pylist()], np.uint32)
    got = chunk_crcs(info, sums)
    want = [int.from_bytes(Path(store.url, info.path, "c", str(i), "0").read_bytes()[-4:], "little")
            for i in range(info.n_chunks)]
    assert got.tolist() == want
