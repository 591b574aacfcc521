"""Session fixtures shared by every test package: tiny real checkpoints, seeded RNGs.

``tiny_checkpoint(family) -> Path`` builds each family's tiny checkpoint once per session
(default seed and sizes); ``tiny_adapter(family) -> ModelAdapter`` loads it once (float32,
CPU, eager attention). torch runs single-threaded in the test session (see below).
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the test suite may reach a hub
# Tiny models are dominated by per-op overhead: on a busy 2-core machine, torch's second
# thread made a tiny capture ~30x slower (0.5 s against 0.016 s, measured). One thread also
# makes CPU sums reproducible across processes (DESIGN.md 5); subprocesses inherit it.
# Export OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from l2s_data.models import make_tiny

    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = make_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_adapter(tiny_checkpoint):
    from l2s_data.models import load_adapter

    loaded: dict[str, object] = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = load_adapter(tiny_checkpoint(family))
        return loaded[family]

    return get


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
