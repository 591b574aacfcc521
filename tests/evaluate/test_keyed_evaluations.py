"""Evaluations are keyed: one row per (run, method, alpha, sample), however many processes run
the same config at once.

Reproduced against the previous store: two `l2s evaluate` runs of one config at once committed
140 rows for 70 keys; the ``evaluations`` view's DISTINCT kept both (their ``created_at``
differ) and the metrics counted n = 2 per sample.
"""

from __future__ import annotations

import datetime as dt

from l2s_data.evaluate.results import load_results
from l2s_data.evaluate.run import Evaluation
from l2s_data.evaluate.worker import evaluation_id
from l2s_data.store import Store

from .conftest import eval_config


def _row(run: str, sid: str, response: str, at: dt.datetime, alpha=1.0) -> dict:
    return {"evaluation_id": evaluation_id(run, "mean-s", alpha, sid), "run_id": run, "method": "mean-s",
            "alpha": alpha, "dataset": "synthetic-safety", "sample_id": sid, "question_id": None,
            "response": response, "scores_json": "{}", "created_at": at}


def test_the_same_keys_committed_twice_count_once_and_the_first_commit_wins(tmp_path):
    store = Store.open(tmp_path / "store", create=True)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ids = [f"s{i}" for i in range(6)]
    assert store.put("evaluations", [_row("r", s, "first", t0) for s in ids]) is True
    # a second process, same batch: loses the create, writes nothing
    assert store.put("evaluations", [_row("r", s, "second", t0 + dt.timedelta(seconds=1)) for s in ids]) is False
    # a third, batched differently (overlapping keys): commits, and the view keeps the first rows
    assert store.put("evaluations", [_row("r", s, "third", t0 + dt.timedelta(seconds=2)) for s in ids[3:] + ["s9"]])
    t = store.sql("SELECT sample_id, response FROM evaluations WHERE run_id = 'r' ORDER BY sample_id").to_pylist()
    assert t == [{"sample_id": s, "response": "first"} for s in ids] + [{"sample_id": "s9", "response": "third"}]
    dup = store.sql("SELECT count(*) AS n FROM (SELECT method, alpha, sample_id FROM evaluations "
                    "GROUP BY ALL HAVING count(*) > 1)")
    assert dup["n"][0].as_py() == 0


def test_two_evaluations_of_one_config_at_once_give_one_row_per_key_and_n_one_per_sample(world):
    """Two runs planned before either commits (as two processes started together): the second
    runs whole while the first is between batches, then the first goes on."""
    root, ckpt, adapter = world
    cfg = eval_config(root, ckpt, steering={"methods": ["none", "mean-s"], "alphas": [1.0]},
                      run={"name": "twice"})
    first, second = Evaluation(cfg, adapter=adapter), Evaluation(cfg, adapter=adapter)
    plan_first = first.plan()
    assert plan_first.missing_rows == plan_first.total_rows  # both see nothing committed yet
    ran_second = []

    def interleave(outcome):
        if not ran_second:
            ran_second.append(second.run())

    first.run(on_done=interleave)
    n = len(first.infos)
    store = Store.open(root / "store")
    t = store.sql("SELECT method, alpha, sample_id, count(*) AS c FROM evaluations WHERE run_id = 'twice' "
                  "GROUP BY ALL").to_pylist()
    assert len(t) == n * 2 and {r["c"] for r in t} == {1}
    res = load_results(store, "twice")
    for (method, alpha), metrics in res.metrics(part=None).items():
        assert metrics["n"] == len(res.select_rows(method=method, alpha=alpha)), (method, alpha)
    per_sample = {}
    for r in res.rows:
        per_sample[(r["method"], r["alpha"], r["sample_id"], r["subset"])] = \
            per_sample.get((r["method"], r["alpha"], r["sample_id"], r["subset"]), 0) + 1
    assert set(per_sample.values()) == {1}
