"""A store with a planted nonlinear map, written through the store's own writer.

x ~ N(0, 1) in 16 dims (view ``input``, layers 0 and 1); y = tanh(x A) B + 0.1 (x C)^2 in 12 dims
(view ``p2s``, layer 1; layer 0 holds unrelated noise), over three categories with yes/no labels,
in three shards. A second pair recipe ("plant-agnostic") holds a behaviour-agnostic p2s.
Loaded by path from the conftest files of tests/steer and tests/train.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from l2s_data.schemas import MEMBERSHIPS, SAMPLES
from l2s_data.store import Store

N, D_IN, D_OUT = 600, 16, 12
CATEGORIES = ("01-Illegal_Activitiy", "10-Legal_Opinion", "12-Health_Consultation")


@dataclass
class Planted:
    url: Path
    ids: list[str]
    x: dict[int, np.ndarray]         # layer -> [N, D_IN]
    y: dict[int, np.ndarray]         # layer -> [N, D_OUT]
    agnostic: np.ndarray             # [N, D_OUT]
    split: np.ndarray                # "train" / "test"
    category: np.ndarray
    label: np.ndarray

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def build(root: Path, *, seed: int = 0) -> Planted:
    rng = np.random.default_rng(seed)
    ids = [f"s{i:04d}" for i in range(N)]
    x1 = rng.standard_normal((N, D_IN)).astype(np.float32)
    x0 = rng.standard_normal((N, D_IN)).astype(np.float32)
    a = rng.standard_normal((D_IN, 24)) / np.sqrt(D_IN)
    b = rng.standard_normal((24, D_OUT))
    c = rng.standard_normal((D_IN, D_OUT)) / np.sqrt(D_IN)
    y1 = (np.tanh(x1 @ a) @ b + 0.1 * (x1 @ c) ** 2 + 0.5).astype(np.float32)
    y0 = rng.standard_normal((N, D_OUT)).astype(np.float32)
    ag = (rng.standard_normal((N, D_OUT)) * 0.1 + 1.0).astype(np.float32)
    split = np.where(np.arange(N) % 6 == 0, "test", "train")
    category = np.array([CATEGORIES[i % 3] for i in range(N)])
    label = np.where(rng.random(N) < 0.25, "yes", "no")

    store = Store.open(root, create=True)
    rin = store.put_recipe({"planted": "input"}, name="plant-input")
    rpair = store.put_recipe({"planted": "pair"}, name="plant-pair")
    rag = store.put_recipe({"planted": "agnostic"}, name="plant-agnostic")
    for s, lo in enumerate(range(0, N, 200)):
        sl = slice(lo, lo + 200)
        with store.shard_writer(f"in-{s}", rin, ids[sl], chunk_bytes=64 * D_IN * 4) as w:
            w.write("input", "prompt_last", 0, x0[sl], "float32")
            w.write("input", "prompt_last", 1, x1[sl], "float32")
        with store.shard_writer(f"pair-{s}", rpair, ids[sl], chunk_bytes=64 * D_OUT * 4) as w:
            w.write("p2s", "completion_last", 0, y0[sl], "float32")
            w.write("p2s", "completion_last", 1, y1[sl], "float32")
        with store.shard_writer(f"ag-{s}", rag, ids[sl]) as w:
            w.write("p2s", "completion_last", 1, ag[sl], "float32")
    samples = pa.Table.from_pylist([{"sample_id": i, "query": f"q {i}", "image_path": f"{i}.png",
                                     "image_sha256": "0" * 64, "width": 8, "height": 8} for i in ids], schema=SAMPLES)
    mem = pa.Table.from_pylist([{"dataset": "planted", "subset": "all", "question_id": i, "sample_id": i,
                                 "category": str(category[k]), "label": str(label[k]), "split": str(split[k])}
                                for k, i in enumerate(ids)], schema=MEMBERSHIPS)
    store.put("samples", samples, memberships=mem)
    return Planted(root, ids, {0: x0, 1: x1}, {0: y0, 1: y1}, ag, split, category, label)


def train_config(url, out_dir, **over) -> dict:
    """A training config dict for the planted store (layer 1 -> layer 1)."""
    cfg = {
        "store": str(url), "out_dir": str(out_dir), "name": "planted", "seed": 0,
        "input": {"recipe": "plant-input", "position": "prompt_last", "layer": 1},
        "target": {"recipe": "plant-pair", "position": "completion_last", "layer": 1},
        "split": {"train_where": "split = 'train'", "val_where": ""},
        "trainer": {"hidden_size": 64, "lr": 3e-3, "epochs": 60, "batch_size": 32, "schedule": "cosine",
                    "warmup_epochs": 2, "select": "best_validation"},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg

