"""The serving config, the shipped configs and manifests, and the CLI's thin layer (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.errors import ConfigError
from l2s_data.serve import load_serve_config, parse_serve_config

ROOT = Path(__file__).resolve().parents[2]


def _minimal(**serve):
    return {"model": {"path": "m"}, "data": {"path": "d"}, "steering": {"layer": 1, "methods": ["none", "l2s"]},
            "run": {"store": "s"}, "serve": serve}


def test_the_shipped_tiny_config_serves_the_demos_methods_with_l2s_by_default():
    cfg = load_serve_config(ROOT / "l2s_data/serve/configs/tiny-llava.toml")
    assert cfg.methods == ("none", "prompt-only", "mean-s", "mean-s-ba", "l2s")
    assert cfg.default_method == "l2s" and cfg.default_alpha("l2s") == 2.0 and cfg.default_alpha("mean-s") == 1.0
    assert cfg.default_alpha("none") is None
    assert list(cfg.model_ids)[0] == "tiny-llava:none"
    assert cfg.serve.host == "127.0.0.1"  # loopback by default
    # the demo's own paths (run from the folder where `l2s demo` ran)
    assert cfg.evaluation.l2s.predictor == "demo-out/train-runs/demo-train/predictor.safetensors"


def test_the_rayservice_runs_the_application_builder_on_the_cluster_config():
    doc = yaml.safe_load((ROOT / "cluster/rayservice.yaml").read_text())
    assert doc["kind"] == "RayService"
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (application,) = serve_cfg["applications"]
    module, _, attr = application["import_path"].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), attr))
    config = Path(application["args"]["config"].replace("/app/", str(ROOT) + "/", 1))
    cfg = load_serve_config(config)  # the image holds the project at /app
    assert cfg.evaluation.model.device == "cuda" and cfg.default_method == "l2s"
    assert doc["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"


@pytest.mark.parametrize(("serve", "words"), [
    ({"methods": ["p2s"]}, "contrastive pair"),
    ({"methods": ["mean-s"]}, "[steering] methods does not list"),
    ({"default_method": "prompt-only"}, "not served"),
    ({"method_alphas": {"l2s": "big"}}, "not a number"),
    ({"replica": 2}, "unknown key 'replica'"),
    ({"methods": ["bogus"]}, "does not exist"),
    ({"health_check_period_s": 0}, "health_check_period_s"),
])
def test_bad_serve_sections_are_refused_with_the_key_named(serve, words):
    with pytest.raises(ConfigError) as e:
        parse_serve_config(_minimal(**serve))
    assert words in str(e.value)


def test_paths_are_made_absolute_before_replicas_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_serve_config({**_minimal(image_root="imgs"), "l2s": {"predictor": "p.safetensors"}}).absolute()
    assert cfg.evaluation.model.path == str(tmp_path / "m")
    assert cfg.evaluation.l2s.predictor == str(tmp_path / "p.safetensors")
    assert cfg.serve.image_root == str(tmp_path / "imgs")


def test_the_cli_mounts_serve_and_submit_serve_and_refuses_a_missing_config(tmp_path):
    from l2s_data.submit import ENTRYPOINTS

    runner = CliRunner()
    assert runner.invoke(app, ["serve", "--help"]).exit_code == 0
    assert runner.invoke(app, ["submit", "serve", "--help"]).exit_code == 0
    assert ENTRYPOINTS["serve"] == "jobs/serve.py" and (ROOT / "jobs/serve.py").is_file()
    r = runner.invoke(app, ["serve", str(tmp_path / "nope.toml")])
    assert r.exit_code == 2 and "does not exist" in r.output
    cfg = tmp_path / "serve.toml"  # a model path that names nothing: refused before Ray starts
    cfg.write_text('[model]\npath = "no-model"\n[data]\npath = "d"\n[steering]\nlayer = 1\nmethods = ["none"]\n'
                   '[run]\nstore = "s"\n')
    r = runner.invoke(app, ["serve", str(cfg)])
    assert r.exit_code == 2 and "[model] path = 'no-model' does not exist" in r.output


def test_submit_serve_builds_a_job_whose_proxy_listens_on_every_interface_unless_told(tmp_path):
    """`l2s submit serve` is for a cluster: without --host its job's proxy listens on 0.0.0.0, where
    the cluster's clients reach it (`l2s serve` and the config default to loopback)."""
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[model]\npath = "m"\n[data]\npath = "d"\n[steering]\nlayer = 1\nmethods = ["none"]\n'
                   '[run]\nstore = "s"\n')
    built = CliRunner().invoke(app, ["submit", "serve", str(cfg), "--port", "8123", "--dry-run"])
    assert built.exit_code == 0, built.output
    entry = built.output.split("entrypoint: ")[1].splitlines()[0]
    assert entry == f"python jobs/serve.py {cfg} --address auto --host 0.0.0.0 --port 8123"


def test_the_health_check_period_reaches_the_deployment():
    """How soon Ray Serve finds a dead replica (and starts another): its default, or the config's."""
    from l2s_data.serve.app import deployment_options

    assert deployment_options(parse_serve_config(_minimal()))["health_check_period_s"] == 10.0
    assert deployment_options(parse_serve_config(_minimal(health_check_period_s=1.5)))["health_check_period_s"] == 1.5
