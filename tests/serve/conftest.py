"""Fixtures of the serving tests: what the server serves (a tiny LLaVA, a store extracted from it,
a predictor trained on that store), and the service itself on the session's Ray head.

The extraction covers the training split only, so a test sample's h_X is not cached: the
evaluation computes it by an unsteered prefill, as the server does for every request.
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

L_STAR, L_PRIME = 1, 3
N = 40  # 8 of them in the test split
ALPHA = 4.0


@dataclass
class World:
    root: Path
    checkpoint: Path
    predictor: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def store(self) -> Path:
        return self.root / "store"


@pytest.fixture(scope="session")
def serve_world(tmp_path_factory, tiny_checkpoint, tiny_adapter) -> World:
    from l2s_data.datasets import make_synthetic
    from l2s_data.extract import Extraction
    from l2s_data.extract import parse_config as extract_config
    from l2s_data.train import parse_train_config, train

    root = tmp_path_factory.mktemp("serve-world")
    make_synthetic("synthetic-safety", root / "data", n=N)
    ckpt = tiny_checkpoint("llava")
    cfg = extract_config({
        "model": {"path": str(ckpt)}, "data": {"path": str(root / "data"), "splits": ["train"]},
        "behavior": {"behavior": "safety-llava"},
        "recipe": {"views": ["input", "pos", "neg", "p2s"], "layers": [L_STAR, L_PRIME], "store_dtype": "float32"},
        "run": {"store": str(root / "store"), "batch_size": 8, "shard_size": 16, "name": "w"},
    }, source="(test)")
    Extraction(cfg, adapter=tiny_adapter("llava")).run()
    tcfg = parse_train_config({
        "store": str(root / "store"), "out_dir": str(root / "runs"), "name": "serve",
        "input": {"recipe": "w-input", "view": "input", "position": "prompt_last", "layer": L_PRIME},
        "target": {"recipe": "w-pair", "view": "p2s", "position": "completion_last", "layer": L_STAR},
        "split": {"train_where": "split = 'train'", "val_where": "", "val_fraction": 0.25},
        "trainer": {"hidden_size": 16, "epochs": 5, "batch_size": 8, "lr": 3e-3},
    }, source="(test)")
    run = train(tcfg, run_id="serve-train")
    return World(root, Path(ckpt), Path(run.artifact))


def serve_config_dict(world: World, **serve: Any) -> dict[str, Any]:
    """A serving config over ``world``: the evaluation sections and ``[serve]`` (``serve`` overrides)."""
    return {
        "model": {"path": str(world.checkpoint)},
        "data": {"path": str(world.data), "task": "safety", "split": "test", "behavior": "safety-llava"},
        "steering": {"layer": L_STAR, "methods": ["none", "prompt-only", "mean-s", "l2s"], "alphas": [ALPHA]},
        "cache": {"pair_recipe": "w-pair"},
        "l2s": {"predictor": str(world.predictor), "input_layer": L_PRIME},
        "generation": {"max_new_tokens": 6, "batch_size": 1},
        "run": {"store": str(world.store), "name": "serve-eval"},
        "serve": {"default_method": "l2s", "alpha": ALPHA, "model_name": "tiny-llava", "max_tokens": 64,
                  "image_root": str(world.data), "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
                  "name": "l2s-test", "health_check_period_s": 1.0, **serve},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


@dataclass
class Served:
    base_url: str         # http://127.0.0.1:PORT/v1
    cfg: Any              # the ServeConfig
    world: World
    app_name: str
    job: Any              # the SubmittedJob that deployed it (see tests/conftest.py)


@pytest.fixture(scope="session")
def served(serve_world, ray_address, run_submitted, config_toml, tmp_path_factory):
    """The application on the session's Ray head, on a free loopback port, deployed as a cluster
    deploys it: by the job that `l2s submit serve` builds (`python jobs/serve.py CONFIG --address
    auto --host 127.0.0.1 --port PORT`), run here in this process. The job deploys, prints where
    the application answers and ends; the application keeps serving (tests/serve/test_submit.py
    checks the job). Its replicas, the Serve controller and the proxy end with the session's
    head, which is killed by PID right after (Ray Serve's own shutdown first waited 2.4 s for a
    graceful stop, measured)."""
    import ray

    from l2s_data.serve import parse_serve_config

    raw = serve_config_dict(serve_world)
    cfg = tmp_path_factory.mktemp("served") / "serve.toml"
    cfg.write_text(config_toml(raw))
    connected_before = ray.is_initialized()
    job = run_submitted("serve", cfg, "--host", "127.0.0.1", "--port", free_port())
    assert job.code == 0, job.output
    serving = next(ln for ln in job.output.splitlines() if ln.startswith("serving "))
    url = serving.split(" at ", 1)[1].split(" (application ", 1)[0]
    try:
        yield Served(url, parse_serve_config(raw, source="(test)"), serve_world, raw["serve"]["name"], job)
    finally:
        if ray.is_initialized() and not connected_before:
            ray.shutdown()


@pytest.fixture
def client(served):
    import openai

    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=120)
