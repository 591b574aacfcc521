"""Fixtures of the store tests: a fresh store on the local disk, and small synthetic arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from l2s_data.schemas import MEMBERSHIPS, SAMPLES
from l2s_data.store import Store
from l2s_data.store.snapshot import commit_of


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


def committed(store: Store, shard: str) -> bool:
    """Whether a commit of ``shard`` counts now, as the writer's own check sees it (its own
    manifest or a compacted one, tombstones applied)."""
    return commit_of(store.admin.backend, shard) is not None


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


class Crash(BaseException):
    """A simulated crash: a BaseException, so no ``except Exception`` in the store catches it."""


class Crashing:
    """Makes the store's backend die at its ``at``-th mutating call (creates, writes, removals):
    that call and every later one raise :class:`Crash`, as if the process had died there, so
    nothing runs after it (a lease is not released either). ``calls`` counts them."""

    MUTATING = ("put_if_absent", "write_bytes", "remove_files", "remove_dir", "makedirs")

    def __init__(self, store: Store, at: int | None):
        self.backend = store.admin.backend
        self.at = at
        self.calls = 0
        self.dead = False
        self._saved = {}

    def __enter__(self) -> "Crashing":
        for name in self.MUTATING:
            real = getattr(self.backend, name)
            self._saved[name] = real

            def wrapped(*a, _real=real, **k):
                self.calls += 1
                if self.dead or (self.at is not None and self.calls >= self.at):
                    self.dead = True
                    raise Crash(f"simulated crash at mutating call {self.calls}")
                return _real(*a, **k)

            setattr(self.backend, name, wrapped)
        return self

    def __exit__(self, *exc) -> bool:
        for name in self.MUTATING:
            delattr(self.backend, name)  # the instance attribute goes, the class's method is back
        return exc[0] is Crash


def expire_leases(monkeypatch) -> None:
    """Let the clock of the lease code run two hours ahead: a holder that died has expired."""
    import datetime as dt

    from l2s_data.store import leases
    from l2s_data.store.contract import now

    monkeypatch.setattr(leases, "now", lambda: now() + dt.timedelta(hours=2))
