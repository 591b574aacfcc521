"""`l2s evaluate CONFIG`, `l2s report eval RUN` and jobs/evaluate.py, with their bad-input errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.cli.evaluate import register_report, report_group

from .conftest import L_PRIME, L_STAR

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _toml(root, ckpt, *, name, methods='["none", "mean-s", "p2s"]', alphas="[1.0, 3.0]", extra=""):
    return f"""
[model]
path = "{ckpt}"
[data]
path = "{root / 'data'}"
task = "safety"
behavior = "safety-llava"
[steering]
layer = {L_STAR}
methods = {methods}
alphas = {alphas}
[cache]
input_recipe = "t-input"
pair_recipe = "t-pair"
[l2s]
input_layer = {L_PRIME}
[generation]
max_new_tokens = 3
[run]
store = "{root / 'store'}"
name = "{name}"
{extra}
"""


def test_evaluate_then_report_from_the_command_line(world, tmp_path):
    root, ckpt, _ = world
    cfg = tmp_path / "eval.toml"
    cfg.write_text(_toml(root, ckpt, name="cli"))
    dry = runner.invoke(app, ["evaluate", str(cfg), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "run cli" in dry.output and "missing:" in dry.output
    n_rows = int(dry.output.split("rows asked for: ")[1].split(";")[0])
    res = runner.invoke(app, ["evaluate", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"computed {n_rows} row(s) of {n_rows}" in res.output
    again = runner.invoke(app, ["evaluate", str(cfg)])
    assert "nothing to compute" in again.output
    out = tmp_path / "report"
    rep = runner.invoke(app, ["report", "eval", "cli", "--store", str(root / "store"), "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    assert (out / "report.md").is_file() and (out / "report.html").is_file() and (out / "by_category.png").is_file()
    assert "Mean-S" in rep.output and "chosen alphas" in rep.output


@pytest.mark.parametrize(("what", "kwargs", "message"), [
    ("unknown method", {"methods": '["none", "l3s"]'}, "method 'l3s' does not exist"),
    ("alpha not a number", {"alphas": '[1.0, "big"]'}, r"steering.alphas[1] = 'big' is not a number"),
    ("unknown key", {"extra": "[judges]\nguard_path = 'x'\n"}, "unknown key 'judges.guard_path'"),
])
def test_bad_configs_fail_with_a_clear_message(world, tmp_path, what, kwargs, message):
    root, ckpt, _ = world
    cfg = tmp_path / "bad.toml"
    cfg.write_text(_toml(root, ckpt, name="bad", **kwargs))
    res = runner.invoke(app, ["evaluate", str(cfg)])
    assert res.exit_code == 2, what
    assert message in " ".join(res.output.split()), res.output


def test_a_guard_path_that_is_not_a_causal_lm_fails_before_generating(world, tmp_path):
    root, ckpt, _ = world
    cfg = tmp_path / "guard.toml"
    cfg.write_text(_toml(root, ckpt, name="guarded", extra=f'[judges]\nguard = "{ckpt}"\n'))
    res = runner.invoke(app, ["evaluate", str(cfg)])
    assert res.exit_code == 2
    assert "holds a 'llava' checkpoint" in " ".join(res.output.split()) and "not a causal LM" in res.output
    from l2s_data.store import Store

    rows = Store.open(root / "store").sql("SELECT count(*) AS n FROM evaluations WHERE run_id = 'guarded'")
    assert rows["n"][0].as_py() == 0


def test_report_of_an_unknown_run_fails_with_the_known_runs(world, tmp_path):
    root, _, _ = world
    res = runner.invoke(app, ["report", "eval", "no-such-run", "--store", str(root / "store"), "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "evaluation run 'no-such-run' does not exist" in " ".join(res.output.split())
    assert not (tmp_path / "r").exists()


def test_report_eval_joins_an_existing_report_group():
    root = typer.Typer()
    existing = typer.Typer()
    existing.command("train")(lambda: None)
    root.add_typer(existing, name="report")
    assert report_group(root) is existing
    register_report(existing)
    assert [c.name for c in existing.registered_commands] == ["train", "eval"]
    fresh = typer.Typer()
    assert report_group(fresh) is report_group(fresh)


def test_the_job_script_runs_the_same_evaluation(world, tmp_path, capsys):
    root, ckpt, _ = world
    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    cfg = tmp_path / "job.toml"
    cfg.write_text(_toml(root, ckpt, name="job", methods='["none", "p2s"]', alphas="[2.0]"))
    assert job.main([str(cfg), "--report", str(tmp_path / "rep"), "--no-plots"]) == 0   # plots: tested above
    out = capsys.readouterr().out
    assert "resolved config:" in out and "run id: job" in out and (tmp_path / "rep" / "report.md").is_file()
    assert not list((tmp_path / "rep").glob("*.png"))
    # every row is committed: --workers 2 plans nothing and starts no Ray actor
    assert job.main([str(cfg), "--workers", "2"]) == 0 and "computed 0 of" in capsys.readouterr().out
    assert job.main([str(cfg), "--address", "127.0.0.1:1"]) == 2  # an address needs --workers N
    assert "--workers N" in capsys.readouterr().err


def test_report_eval_with_no_plots_writes_the_tables_without_pngs(world, tmp_path):
    from l2s_data.evaluate.run import Evaluation

    from .conftest import eval_config

    root, ckpt, adapter = world
    Evaluation(eval_config(root, ckpt, steering={"methods": ["none", "mean-s"], "alphas": [1.0]}, data={"limit": 4},
                           run={"name": "cli-no-plots"}), adapter=adapter).run()
    out = tmp_path / "report"
    rep = runner.invoke(app, ["report", "eval", "cli-no-plots", "--store", str(root / "store"), "--out", str(out),
                              "--no-plots"])
    assert rep.exit_code == 0, rep.output
    assert (out / "report.md").is_file() and (out / "results.json").is_file() and not list(out.glob("*.png"))
    assert "(written without plots)" in (out / "report.md").read_text()
    assert "(0 plots)" in " ".join(rep.output.split())
