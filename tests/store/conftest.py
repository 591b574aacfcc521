"""Fixtures of the store tests: a fresh store on the local disk, and small synthetic arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from l2s_data.schemas import MEMBERSHIPS, SAMPLES
from l2s_data.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store", create=True)


def sample_ids(n: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def write_shard(store: Store, shard: str, rid: str, ids, *, d: int = 8, seed: int = 0,
                keys=(("p2s", "completion_last", 2),), dtype: str = "float32", chunk_bytes: int = 64):
    """Write one shard with the given keys; returns {key: float32 array [len(ids), d]}."""
    out = {}
    with store.shard_writer(shard, rid, ids, chunk_bytes=chunk_bytes) as w:
        for j, (view, pos, layer) in enumerate(keys):
            a = rows(len(ids), d, seed + j)
            w.write(view, pos, layer, a, dtype)
            out[(view, pos, layer)] = a
    assert w.won
    return out


def tables(ids, *, split=lambda i: "train" if i % 4 else "test", category=lambda i: f"c{i % 3}"):
    samples = pa.Table.from_pylist(
        [{"sample_id": s, "query": f"q{i}", "image_path": f"images/{i}.png", "image_sha256": "0" * 64,
          "width": 8, "height": 8} for i, s in enumerate(ids)],
        schema=SAMPLES,
    )
    memberships = pa.Table.from_pylist(
        [{"dataset": "synthetic", "subset": "all", "question_id": str(i), "sample_id": s,
          "category": category(i), "label": "yes" if i % 2 else "no", "split": split(i)}
         for i, s in enumerate(ids)],
        schema=MEMBERSHIPS,
    )
    return samples, memberships
