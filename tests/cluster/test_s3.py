"""A store on S3 (a real moto server on loopback, through s3fs): what a cluster's shared store is.

Credentials and the endpoint come from the usual AWS_* environment variables (set by the
``s3_endpoint`` fixture); Ray actors get them from the driver (FORWARDED_ENV).
"""

from __future__ import annotations

import multiprocessing as mp
import uuid

import numpy as np
import pytest

from l2s_data.store import Key, Store

N = 13


def _url() -> str:
    return f"s3://l2s-test/{uuid.uuid4().hex[:12]}/store"


@pytest.mark.slow
def test_an_extraction_on_ray_into_s3_is_read_back_by_sql_and_a_loader_epoch(s3_endpoint, ray_address,
                                                                             tiny_checkpoint, tmp_path):
    from l2s_data.datasets import make_synthetic
    from l2s_data.extract import Extraction, parse_config
    from l2s_data.extract.distributed import run_extraction

    make_synthetic("synthetic-safety", tmp_path / "data", n=N)
    url = _url()
    cfg = parse_config({
        "model": {"path": str(tiny_checkpoint("llava"))}, "data": {"path": str(tmp_path / "data")},
        "behavior": {"behavior": "safety-llava"}, "recipe": {"layers": [1], "store_dtype": "float16"},
        "run": {"store": url, "batch_size": 4, "shard_size": 8},
    }, source="(test)")
    report = run_extraction(Extraction(cfg), workers=1, address=ray_address)
    assert report.computed_samples == N and report.store.startswith("s3://")

    store = Store.open(url)
    rows = store.sql("SELECT view, count(*) AS n FROM manifests GROUP BY view ORDER BY view").to_pylist()
    assert rows == [{"view": v, "n": N} for v in ("input", "neg", "p2s", "pos")]
    ext = store.sql("SELECT status, workers, keys_written FROM extractions").to_pylist()
    assert ext == [{"status": "completed", "workers": 1, "keys_written": 4 * N}]

    rin, rpair = report.recipe_ids["input"], report.recipe_ids["pair"]
    x, y = Key(rin, "input", "prompt_last", 1), Key(rpair, "p2s", "completion_last", 1)
    seen_x, seen_y = [], []
    for xb, yb in store.columns((x, y), batch_size=5, shuffle=True, seed=3):
        seen_x.append(np.asarray(xb))
        seen_y.append(np.asarray(yb))
    xs, ys = np.concatenate(seen_x), np.concatenate(seen_y)
    assert xs.shape[0] == ys.shape[0] == N  # one epoch: every sample once
    ids = sorted(store.snapshot().committed_keys(rin)["sample_id"].to_pylist())
    snap = store.snapshot()
    want_x = snap.read(rin, "input", "prompt_last", 1, ids)
    want_y = snap.read(rpair, "p2s", "completion_last", 1, ids)
    # shuffled: compare as sets of rows, pairing kept (each x row sits next to its own y row)
    got = sorted(map(tuple, np.concatenate([xs, ys], axis=1).round(4).tolist()))
    want = sorted(map(tuple, np.concatenate([want_x, want_y], axis=1).round(4).tolist()))
    assert got == want


def _ids(shard: str) -> list[str]:
    return [f"{shard}-{c}" for c in "abc"]


def _race(url: str, rid: str, values: dict, barrier, out) -> None:
    """One contender: per shard, write a whole attempt, wait for the other, then commit."""
    store = Store.open(url)
    for shard, value in values.items():
        with store.shard_writer(shard, rid, _ids(shard)) as w:
            w.write("p2s", "completion_last", 0, np.full((3, 4), value, np.float32), "float32")
            barrier.wait(timeout=120)
            won = w.commit()  # both commits leave the barrier together
        out.put((shard, value, w.attempt, won))


@pytest.mark.slow
def test_two_processes_racing_to_commit_one_shard_on_s3_leave_exactly_one_winner(s3_endpoint):
    url = _url()
    store = Store.open(url, create=True)
    rid = store.put_recipe({"race": 1})
    shards = [f"s-race-{i}" for i in range(3)]
    # spawn: each contender a fresh interpreter (s3fs's event loop does not survive a fork),
    # which imports this module for _race: it imports the store only, not torch
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(url, rid, {s: float(10 * i + v) for i, s in enumerate(shards)},
                                             barrier, out)) for v in (1, 2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in range(2 * len(shards))]
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    snap = Store.open(url).snapshot()
    for shard in shards:
        winners = [r for r in results if r[0] == shard and r[3]]
        assert len(winners) == 1  # exactly one of the two commits created the manifest
        _, value, attempt, _ = winners[0]
        assert snap.shards[shard] == attempt  # readers see the winner's attempt, and its values
        np.testing.assert_array_equal(snap.read(rid, "p2s", "completion_last", 0, _ids(shard)),
                                      np.full((3, 4), value, np.float32))
