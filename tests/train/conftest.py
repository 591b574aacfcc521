"""Fixtures of the training tests: a store extracted from the tiny LLaVA. (The planted-map
store, ``planted``, and the session's Ray head, ``ray_address``, come from tests/conftest.py.)"""

from __future__ import annotations

import pytest


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
