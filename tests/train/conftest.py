"""Fixtures of the training tests: a planted-map store and a store extracted from the tiny LLaVA.
(The session's Ray head, ``ray_address``, comes from tests/conftest.py.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load_planted():
    name = "l2s_tests_planted"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "steer" / "planted.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def planted_mod():
    return _load_planted()


@pytest.fixture(scope="session")
def planted(tmp_path_factory, planted_mod):
    return planted_mod.build(tmp_path_factory.mktemp("planted") / "store")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_checkpoint, tiny_adapter):
    """A real extraction of the tiny LLaVA on 26 synthetic-safety samples (every layer, float32);
    recipes are named "tiny-input" and "tiny-pair", as `l2s demo` names its "demo-*"."""
    from l2s_data.datasets import make_synthetic
    from l2s_data.extract import Extraction, parse_config

    root = tmp_path_factory.mktemp("tiny-store")
    make_synthetic("synthetic-safety", root / "data", n=26)
    cfg = parse_config({
        "model": {"path": str(tiny_checkpoint("llava"))},
        "data": {"path": str(root / "data")},
        "behavior": {"behavior": "safety-llava"},
        "recipe": {"views": ["input", "pos", "neg", "p2s"], "layers": "all", "store_dtype": "float32",
                   "input_positions": ["prompt_last"], "pair_positions": ["completion_last"]},
        "run": {"store": str(root / "store"), "batch_size": 8, "shard_size": 16, "name": "tiny"},
    }, source="(test)")
    report = Extraction(cfg, adapter=tiny_adapter("llava")).run()
    assert report.computed_samples == 26
    return root / "store"
