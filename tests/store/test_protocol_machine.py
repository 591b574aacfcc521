"""The commit protocol against a model: random sequences of write, compact, delete and gc, each
of which may die at any of its steps, and every snapshot checked against what must be visible.

The model is a dict shard -> (attempt, seed of its rows). Rules:

- a write that reports ``won=True`` is in the model (and visible at once); a write to a shard
  the model holds never changes it; a write that died may have committed (its manifest was
  created before the crash) or not, and nothing else;
- a delete that finishes removes its recipe's shards; one that died removed all of them (its
  tombstone was committed) or none;
- compact and gc never change what is visible, finished or not.

A crash (``conftest.Crashing``) makes the backend's n-th mutating call and every later one
raise, as if the process had died there: its lease is never released, so the next step lets
the lease expire first. The checks after every step: the snapshot's shards and attempts are the
model's, every row reads back as written, the writer's own check (``commit_of``) agrees; at the end of each run SQL
(``manifests`` and ``_manifests``), gc and a full ``verify`` agree too.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from l2s_data.errors import StoreError
from l2s_data.store import Store

from .conftest import Crashing, committed, rows, sample_ids

KEY = ("p2s", "completion_last", 2)
N, D = 6, 4
SHARDS = ("a-0", "a-1", "b-0", "b-1")
CRASH = st.one_of(st.none(), st.integers(1, 9))


def _release_dead_leases(store: Store) -> None:
    """The holder of every unreleased lease died: mark it released (what its expiry does)."""
    for name in store.admin.backend.listdir("leases"):
        if name.endswith(".json"):
            store.admin.backend.put_if_absent(f"leases/{name[:-5]}.released", b"")


class StoreProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="l2s-protocol-"))
        self.store = Store.open(self.dir / "store", create=True)
        self.model: dict[str, tuple[str, int]] = {}
        self.seed = 0

    def teardown(self) -> None:
        try:
            _release_dead_leases(self.store)
            n = self.store.sql("SELECT count(*) AS n FROM manifests")["n"][0].as_py()
            raw = self.store.sql("SELECT count(*) AS n FROM _manifests")["n"][0].as_py()
            assert n == raw == N * len(self.model)
            self.store.admin.gc(grace_s=0)
            self.check()
            assert self.store.admin.verify() == []
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _rid(self, recipe: str) -> str:
        return self.store.put_recipe({"r": recipe}, name=recipe)

    def _after(self, c: Crashing) -> None:
        if c.dead:
            _release_dead_leases(self.store)

    @rule(shard=st.sampled_from(SHARDS), crash=CRASH)
    def write(self, shard: str, crash: int | None) -> None:
        rid = self._rid(shard[0])
        self.seed += 1
        w = None
        with Crashing(self.store, crash) as c:
            w = self.store.shard_writer(shard, rid, sample_ids(N, prefix=f"{shard}-"), chunk_bytes=64)
            with w:
                w.write(*KEY, rows(N, D, self.seed), "float32")
        self._after(c)
        now = self.store.snapshot().shards.get(shard)
        before = self.model.get(shard)
        if w.won:
            assert before is None and now == w.attempt, "won=True but not visible"
        elif before is not None:
            assert now == before[0], "a write changed a committed shard"
        else:
            assert now in (None, w.attempt) and (c.dead or now is None)
        if now == w.attempt:
            self.model[shard] = (w.attempt, self.seed)

    @rule(crash=CRASH)
    def compact(self, crash: int | None) -> None:
        with Crashing(self.store, crash) as c:
            self.store.admin.compact(min_files=1)
        self._after(c)

    @rule(recipe=st.sampled_from("ab"), crash=CRASH)
    def delete(self, recipe: str, crash: int | None) -> None:
        rid = self._rid(recipe)
        with Crashing(self.store, crash) as c:
            self.store.admin.delete_recipe(rid, force=True)
        self._after(c)
        mine = {s for s in self.model if s.startswith(recipe)}
        left = set(self.store.snapshot().shards) & mine
        if not c.dead:
            assert not left
        assert left in (set(), mine), "a delete that died half-way is neither done nor undone"
        for s in mine - left:
            del self.model[s]

    @rule(crash=CRASH)
    def gc(self, crash: int | None) -> None:
        with Crashing(self.store, crash) as c:
            self.store.admin.gc(grace_s=0)
        self._after(c)

    @invariant()
    def check(self) -> None:
        snap = self.store.snapshot()
        assert snap.shards == {s: a for s, (a, _) in self.model.items()}
        for shard, (_, seed) in self.model.items():
            got = snap.read(self._rid(shard[0]), *KEY, sample_ids(N, prefix=f"{shard}-"))
            np.testing.assert_array_equal(got, rows(N, D, seed))
        for shard in SHARDS:
            assert committed(self.store, shard) == (shard in self.model)


StoreProtocol.TestCase.settings = settings(
    max_examples=15, stateful_step_count=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_the_store_protocol_against_a_model = StoreProtocol.TestCase


def test_a_write_blocked_only_by_a_dead_lease_is_a_clear_error_not_a_silent_loss(tmp_path):
    """What the machine's lease expiry hides: before expiry, the rewrite says what is wrong."""
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"r": "a"}, name="a")
    with store.shard_writer("a-0", rid, sample_ids(N), chunk_bytes=64) as w:
        w.write(*KEY, rows(N, D, 0), "float32")
    with Crashing(store, 3):
        store.admin.delete_recipe(rid, force=True)
    w = store.shard_writer("a-0", rid, sample_ids(N), chunk_bytes=64)
    try:
        with w:
            w.write(*KEY, rows(N, D, 1), "float32")
    except StoreError as exc:
        assert "l2s store compact" in str(exc)
    else:
        raise AssertionError("the rewrite reported nothing")
    assert w.won is None and store.snapshot().shards == {}
