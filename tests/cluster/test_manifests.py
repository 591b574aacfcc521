"""cluster/: the launcher YAML passes Ray's own schema; the RayJob has what KubeRay needs; both
run the shipped cluster config, which is a valid extraction config with a shared store."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from l2s_data.extract import load_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _ray_schema() -> dict:
    """The launcher's JSON schema, shipped inside ray (found without importing ray)."""
    import importlib.util

    root = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    return json.loads((root / "autoscaler" / "ray-schema.json").read_text())


def test_the_launcher_yaml_is_valid_for_ray_up_and_has_gpu_workers():
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    schema = _ray_schema()
    jsonschema.validate(cfg, schema)
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["resources_typo"] = {}
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject unknown fields
        jsonschema.validate(bad, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpus = [t["resources"].get("GPU", 0) for name, t in types.items() if name != cfg["head_node_type"]]
    assert gpus and all(g >= 1 for g in gpus)
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0  # no actor lands on the head
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-port=8265" in start and "--dashboard-host=0.0.0.0" in start  # the Jobs API
    assert any("pip install" in c and "l2s-data" in c for c in cfg["setup_commands"])
    # token auth on every node, with the token the submitter holds
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert cfg["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"


def test_the_rayjob_manifest_has_kuberays_required_fields_and_token_auth():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"]["mode"] == "token" and cluster["authOptions"]["secretName"]
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert "rayStartParams" in head
    groups = cluster["workerGroupSpecs"]
    gpus = 0
    for g in groups:
        assert g["groupName"] and "rayStartParams" in g
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert c["image"] == head["template"]["spec"]["containers"][0]["image"]
        gpus += g["minReplicas"] * int(c["resources"]["limits"]["nvidia.com/gpu"])
    # the entrypoint is the job script, asking for no more GPU actors than the cluster starts with
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["python", "jobs/extract.py"]
    assert 1 <= int(args[args.index("--workers") + 1]) <= gpus
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]


@pytest.mark.parametrize("manifest", ["rayjob.yaml", "ray-cluster.yaml"])
def test_both_run_the_shipped_cluster_config_whose_store_every_node_reaches(manifest):
    text = (CLUSTER / manifest).read_text()
    assert "cluster/extract-llava-s3.toml" in text
    cfg = load_config(CLUSTER / "extract-llava-s3.toml")  # a valid config: unknown keys would be refused
    assert cfg.run.store.startswith("s3://")
    assert cfg.model.device == "cuda"  # one GPU per actor, which Ray makes cuda:0
