"""Evaluation on real Ray (the session's `ray start --head`, joined by address), and
the job that `l2s submit evaluate` builds: the tiny LLaVA, greedy, one torch thread per actor."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.evaluate.distributed import run_evaluation
from l2s_data.evaluate.run import Evaluation
from l2s_data.store import Store

from .conftest import L_STAR, eval_config as _config

ROOT = Path(__file__).resolve().parents[2]
STEERING = {"methods": ["none", "l2s", "p2s"], "alphas": [4.0]}


def _rows(store: Store, run_id: str) -> list[tuple]:
    t = store.sql(f"SELECT method, alpha, sample_id, response FROM evaluations WHERE run_id = '{run_id}' "
                  "ORDER BY method, alpha, sample_id")
    return list(zip(*(t[k].to_pylist() for k in ("method", "alpha", "sample_id", "response"))))


@pytest.mark.slow
def test_two_actors_commit_the_in_process_rows_and_a_rerun_computes_nothing(ray_address, world):
    root, ckpt, adapter = world
    local = Evaluation(_config(root, ckpt, steering=STEERING, run={"name": "ray-ref", "unit_size": 3}),
                       adapter=adapter).run()
    cfg = _config(root, ckpt, steering=STEERING, run={"name": "ray-two", "unit_size": 3})
    ev = Evaluation(cfg)
    infos, done = [], []
    report = run_evaluation(ev, workers=2, address=ray_address, on_start=infos.extend, on_done=done.append)
    assert len(report.plan.units) >= 2 and len({i["pid"] for i in infos}) == 2
    assert report.computed_rows == local.computed_rows == report.plan.total_rows == sum(o.samples for o in done)
    store = Store.open(root / "store")
    want, got = _rows(store, "ray-ref"), _rows(store, "ray-two")
    assert len(got) == report.plan.total_rows  # every row once: nothing duplicated
    assert got == want
    by = {(m, s): r for m, _, s, r in got}
    assert any(by[("p2s", s)] != by[("none", s)] for s in ev.infos)  # the steering reached the actors

    again = run_evaluation(Evaluation(cfg), workers=2, address=ray_address, on_start=infos.extend)
    assert again.computed_rows == 0 and again.plan.units == () and len(infos) == 2  # no actor started


def test_address_without_workers_is_refused_with_the_fix(world, tmp_path):
    root, ckpt, _ = world
    cfg = tmp_path / "eval.toml"
    cfg.write_text(_toml(root, ckpt, "refused"))
    res = CliRunner().invoke(app, ["evaluate", str(cfg), "--address", "127.0.0.1:1"])
    assert res.exit_code == 2
    assert "--workers N" in " ".join(res.output.split())


@pytest.mark.slow
def test_the_job_that_submit_evaluate_builds_commits_its_rows_to_the_store(ray_address, world, tmp_path,
                                                                          run_submitted):
    """`l2s submit evaluate` builds `python jobs/evaluate.py CONFIG --workers 1 ...`; run as the
    cluster runs it (here on the session's head, through RAY_ADDRESS)."""
    root, ckpt, _ = world
    cfg = tmp_path / "eval.toml"
    cfg.write_text(_toml(root, ckpt, "submitted"))
    job = run_submitted("evaluate", cfg, "--workers", "1")
    assert job.argv[:2] == ["python", "jobs/evaluate.py"] and job.argv[job.argv.index("--workers") + 1] == "1"
    assert job.runtime_env["working_dir"] == str(ROOT)
    assert job.code == 0, job.output
    assert "worker pid" in job.output
    n = len(Evaluation(_config(root, ckpt)).infos)
    rows = _rows(Store.open(root / "store"), "submitted")
    assert sorted({(m, a) for m, a, _, _ in rows}, key=str) == [("none", None), ("p2s", 2.0)]
    assert len(rows) == 2 * n and all(isinstance(r, str) for *_, r in rows)


def _toml(root, ckpt, name: str) -> str:
    return (f'[model]\npath = "{ckpt}"\n'
            f'[data]\npath = "{root / "data"}"\ntask = "safety"\nbehavior = "safety-llava"\n'
            f'[steering]\nlayer = {L_STAR}\nmethods = ["none", "p2s"]\nalphas = [2.0]\n'
            f'[cache]\npair_recipe = "t-pair"\n'
            f'[generation]\nmax_new_tokens = 4\nbatch_size = 4\n'
            f'[run]\nstore = "{root / "store"}"\nname = "{name}"\nunit_size = 4\n')


def test_a_retried_unit_computes_only_the_rows_its_first_attempt_did_not_commit():
    from l2s_data.evaluate.distributed import remaining
    from l2s_data.evaluate.worker import EvalUnit

    unit = EvalUnit("l2s", (1.0, 2.0), ("a", "b", "c"))
    assert remaining(unit, set()) == [unit]  # a first attempt runs the unit as planned
    done = {("l2s", 1.0, "a"), ("l2s", 2.0, "a"), ("l2s", 1.0, "b"), ("mean-s", 2.0, "c")}
    assert remaining(unit, done) == [EvalUnit("l2s", (2.0,), ("b",)), EvalUnit("l2s", (1.0, 2.0), ("c",))]
    assert remaining(unit, done | {("l2s", 2.0, "b"), ("l2s", 1.0, "c"), ("l2s", 2.0, "c")}) == []
