"""`l2s submit serve`: the job it builds deploys the application and ends, and the application
keeps answering. The job runs here as a cluster runs it (its entrypoint, in a driver on the
session's Ray head); the Jobs API itself is tested end to end in tests/extract/test_ray_submit.py."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shlex
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from l2s_data.cli import app

from .conftest import serve_config_dict
from .test_cli import _toml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_job_that_submit_serve_builds_leaves_its_application_answering(served, tmp_path):
    from ray import serve

    port = int(served.base_url.rsplit(":", 1)[1].split("/")[0])
    cfg = tmp_path / "serve.toml"
    cfg.write_text(_toml(serve_config_dict(served.world, name="l2s-job", route_prefix="/job", model_name="job")))
    built = CliRunner().invoke(app, ["submit", "serve", str(cfg), "--port", str(port), "--dry-run"])
    assert built.exit_code == 0, built.output
    argv = shlex.split(built.output.split("entrypoint: ")[1].splitlines()[0])
    assert argv[:3] == ["python", "jobs/serve.py", str(cfg.resolve())]
    assert argv[3:] == ["--address", "auto", "--host", "0.0.0.0", "--port", str(port)]
    spec = importlib.util.spec_from_file_location("serve_job", ROOT / argv[1])
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert job.main(argv[2:]) == 0  # deploys and ends, as a submitted job does
        assert f"at http://127.0.0.1:{port}/job/v1" in out.getvalue()
        r = httpx.post(f"http://127.0.0.1:{port}/job/v1/chat/completions", timeout=120,
                       json={"model": "job:none", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "job:none"
    finally:
        if "l2s-job" in serve.status().applications:
            serve.delete("l2s-job")
