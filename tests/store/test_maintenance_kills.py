"""A crash anywhere in maintenance is survivable: delete, compact and gc SIGKILLed at every
step (lease taken, tombstone or compaction written, files half removed, lease still held), each
followed by the other operations and a re-extraction. Nothing committed is lost, nothing
deleted comes back, and every ``won=True`` is visible.

The operation runs in a forked child that SIGKILLs itself just before its n-th create, write
or removal on the store's filesystem, for n = 1, 2, ... until the operation finishes without
reaching n: every step of it is a crash point, and the kill is real (no ``finally``, no lease
released).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import shutil
import signal

import numpy as np
import pytest

from l2s_data.errors import LeaseHeldError
from l2s_data.store import Store, leases
from l2s_data.store.contract import now

from .conftest import Crashing, rows, sample_ids

pytestmark = pytest.mark.slow

KEY = ("p2s", "completion_last", 2)
N, D = 6, 4


def _write(store: Store, shard: str, recipe: str, seed: int):
    rid = store.put_recipe({"r": recipe}, name=recipe)
    with store.shard_writer(shard, rid, sample_ids(N, prefix=f"{shard}-"), chunk_bytes=64) as w:
        w.write(*KEY, rows(N, D, seed), "float32")
    return w


def _store(path) -> tuple[Store, dict[str, int]]:
    """Recipe a (3 shards) and b (2), partly compacted, plus an orphan attempt of a dead writer."""
    store = Store.open(path, create=True)
    seeds = {}
    for k, (shard, recipe) in enumerate([("a-0", "a"), ("b-0", "b"), ("a-1", "a")]):
        assert _write(store, shard, recipe, k).won
        seeds[shard] = k
    store.admin.compact()
    for k, (shard, recipe) in enumerate([("a-2", "a"), ("b-1", "b")], start=3):
        assert _write(store, shard, recipe, k).won
        seeds[shard] = k
    with Crashing(store, 3):  # a writer that died before its commit: an orphan for gc
        _write(store, "c-0", "c", 99)
    return store, seeds


def _run_killed(url: str, op: str, at: int) -> bool:
    """Run ``op`` in a forked child that SIGKILLs itself at its ``at``-th mutating call; whether
    it was killed (False: the operation finished before reaching that call)."""

    def child() -> None:
        store = Store.open(url)
        backend = store.admin.backend
        count = [0]
        for name in Crashing.MUTATING:
            real = getattr(backend, name)

            def wrapped(*a, _real=real, **k):
                count[0] += 1
                if count[0] >= at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _real(*a, **k)

            setattr(backend, name, wrapped)
        if op == "delete":
            store.admin.delete_recipe("a", force=True)
        elif op == "compact":
            store.admin.compact(min_files=1)
        else:
            store.admin.gc(grace_s=0)
        os._exit(0)

    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(120)
    assert p.exitcode is not None, "the child hung"
    assert p.exitcode in (0, -signal.SIGKILL), p.exitcode
    return p.exitcode == -signal.SIGKILL


def _check(store: Store, seeds: dict[str, int]) -> None:
    snap = store.snapshot()
    assert set(snap.shards) == set(seeds)
    for shard, seed in seeds.items():
        rid = snap.resolve(shard[0])
        np.testing.assert_array_equal(snap.read(rid, *KEY, sample_ids(N, prefix=f"{shard}-")), rows(N, D, seed))


@pytest.mark.parametrize("op", ["delete", "compact", "gc"])
def test_maintenance_killed_at_every_step_loses_nothing_and_resurrects_nothing(tmp_path, monkeypatch, op):
    killed_at = []
    _, seeds = _store(tmp_path / "template")  # built once; each crash point starts from a copy of it
    for at in range(1, 40):
        shutil.copytree(tmp_path / "template", tmp_path / f"{op}-{at}", symlinks=True)  # times kept (gc's grace)
        store = Store.open(tmp_path / f"{op}-{at}")
        if not _run_killed(store.url, op, at):
            break
        killed_at.append(at)
        # What the killed operation left: a delete counts once its tombstone is committed.
        left_a = {s for s in store.snapshot().shards if s.startswith("a")}
        assert left_a in (set(), {"a-0", "a-1", "a-2"}), left_a
        if op != "delete":
            assert left_a == {"a-0", "a-1", "a-2"}
        expect = {s: v for s, v in seeds.items() if not s.startswith("a") or left_a}
        _check(store, expect)
        # The lease of the dead process holds until it expires (its first step takes it).
        if at > 1:
            with pytest.raises(LeaseHeldError):
                store.admin.compact(min_files=1)
            _check(store, expect)
        with monkeypatch.context() as m:
            m.setattr(leases, "now", lambda: now() + dt.timedelta(hours=2))
            store.admin.gc(grace_s=0)
            _check(store, expect)
            store.admin.compact(min_files=1)
            _check(store, expect)
            # re-extraction: every shard of a that is gone commits again and is visible
            for k in range(3):
                w = _write(store, f"a-{k}", "a", 50 + k)
                if f"a-{k}" in expect:
                    assert w.won is False
                else:
                    assert w.won is True
                    expect[f"a-{k}"] = 50 + k
            _check(store, expect)
            store.admin.delete_recipe("b", force=True)
            for s in ("b-0", "b-1"):
                del expect[s]
            _check(store, expect)
            store.admin.compact(min_files=1)
            store.admin.gc(grace_s=0)
            _check(store, expect)
            assert store.admin.verify() == []
            info = store.admin.info()
            assert info.orphans == [], (info.orphans, store.admin.gc(grace_s=0))
    assert len(killed_at) >= 2, f"{op} was never killed mid-way"
