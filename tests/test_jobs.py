"""The job scripts share one parser and one set of exit codes (jobs/_job.py), and `l2s submit`
builds the command line that runs them; neither contacts a cluster here."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2s_data.cli import app

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("extract", "train", "evaluate", "serve")


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


@pytest.mark.parametrize("name", JOBS)
def test_every_job_exits_2_with_one_error_line_for_a_config_that_does_not_exist(name, tmp_path, capsys):
    job = load_job(name)
    assert job.main([str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.toml" in err and "Traceback" not in err


@pytest.mark.parametrize("name", JOBS)
def test_every_job_takes_its_config_first_and_refuses_an_unknown_option_with_argparses_2(name, capsys):
    job = load_job(name)
    with pytest.raises(SystemExit) as exit_:
        job.main(["cfg.toml", "--no-such-option"])
    assert exit_.value.code == 2 and "--no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["extract", "evaluate"])
def test_the_ray_jobs_share_the_same_ray_options(name, capsys):
    with pytest.raises(SystemExit):
        load_job(name).main(["--help"])
    out = capsys.readouterr().out
    for opt in ("--workers", "--address", "--cpus-per-worker", "--max-retries"):
        assert opt in out


@pytest.mark.parametrize("kind,extra,script,tail", [
    ("extract", ["--workers", "3"], "jobs/extract.py", ["--workers", "3", "--cpus-per-worker", "1"]),
    ("evaluate", ["--workers", "2", "--cpus-per-worker", "2"], "jobs/evaluate.py",
     ["--workers", "2", "--cpus-per-worker", "2"]),
    ("train", [], "jobs/train.py", []),
    ("sweep", [], "jobs/train.py", ["--sweep"]),
])
def test_submit_dry_run_prints_the_entrypoint_and_runtime_env_it_would_send(kind, extra, script, tail, tmp_path):
    cfg = ROOT / "l2s_data" / "extract" / "configs" / "tiny-llava.toml"  # inside the project: sent relative
    res = CliRunner().invoke(app, ["submit", kind, str(cfg), *extra, "--env", "A=b c", "--dry-run"])
    assert res.exit_code == 0, res.output
    argv = shlex.split(res.output.split("entrypoint: ")[1].splitlines()[0])
    assert argv == ["python", script, "l2s_data/extract/configs/tiny-llava.toml", *tail]
    env = json.loads(res.output.split("runtime_env: ")[1].splitlines()[0])
    assert env["working_dir"] == str(ROOT) and env["env_vars"] == {"A": "b c"} and ".venv/" in env["excludes"]
    # a config outside the project folder is not uploaded: the job reads its absolute path
    other = tmp_path / "c.toml"
    other.write_text("")
    res = CliRunner().invoke(app, ["submit", kind, str(other), "--dry-run"])
    assert res.exit_code == 0 and shlex.split(res.output.split("entrypoint: ")[1].splitlines()[0])[2] == str(other)


def test_submit_dry_run_names_a_bad_env_pair():
    res = CliRunner().invoke(app, ["submit", "train", "x.toml", "--env", "=v", "--dry-run"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
