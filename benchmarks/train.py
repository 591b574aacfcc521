"""Benchmark of training from the cache; every figure is a ratio against a baseline timed in the same run.

    python benchmarks/train.py               # all three
    python benchmarks/train.py --only cache  # or: sweep, epoch
    python benchmarks/train.py --quick       # smaller sizes

1. ``cache``: one training from the store vs re-extracting the same features through the same
   tiny LLaVA (same samples: the input view at L' and the p2s view at L*) and then training.
2. ``sweep``: K trainings as a Ray Tune sweep on W concurrent trials vs the same K trainings one
   after another in this process (target: at least 0.8 min(K, W)x). Ray is started before the
   clock starts; the sweep's own reading, worker start-up and committing are timed. Each
   training has the reference protocol's shape on MM-SafetyBench (1,680 samples of a 4096-wide
   LLaVA-7B layer, 10% held out, H = 100, batch 64, 100 epochs): a sweep's fixed costs (worker
   processes importing torch and Tune, 4-5 s here) are paid once, so trainings of a few
   seconds each (``--quick``) cannot show the scaling.
3. ``epoch``: training epochs whose batches stream from the store (``store.columns``, chunked,
   shuffled) vs the same epochs from tensors in memory (target: at least 0.8x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _train_cfg(store: Path, out: Path, *, recipe_in: str, recipe_out: str, l_in: int, l_out: int,
               in_memory="auto", **trainer):
    from l2s_data.train import parse_train_config

    return parse_train_config({
        "store": str(store), "out_dir": str(out), "name": "bench", "in_memory": in_memory,
        "input": {"recipe": recipe_in, "position": "prompt_last", "layer": l_in},
        "target": {"recipe": recipe_out, "position": "completion_last", "layer": l_out},
        "split": {"train_where": "split = 'train'", "val_where": "", "val_fraction": 0.25},  # validation rows out of train
        "trainer": {"hidden_size": 100, "lr": 1e-3, "batch_size": 64, **trainer},
    })


def bench_cache(root: Path, n: int, epochs: int) -> None:
    from l2s_data.datasets import make_synthetic
    from l2s_data.extract import Extraction, parse_config
    from l2s_data.models import load_adapter, make_tiny
    from l2s_data.train import train

    ckpt = make_tiny("llava", root / "tiny-llava")
    make_synthetic("synthetic-safety", root / "data", n=n)
    adapter = load_adapter(ckpt)

    def extract(store: Path):
        cfg = parse_config({
            "model": {"path": str(ckpt)}, "data": {"path": str(root / "data")},
            "behavior": {"behavior": "safety-llava"},
            "recipe": {"views": ["input", "p2s"], "layers": [2, 3], "store_dtype": "float32",
                       "input_positions": ["prompt_last"], "pair_positions": ["completion_last"]},
            "run": {"store": str(store), "batch_size": 8, "shard_size": 64, "name": "b"},
        }, source="(bench)")
        return Extraction(cfg, adapter=adapter).run()

    extract(root / "warm")  # first-call costs (tokenizer, kernels) out of the comparison
    cfg = _train_cfg(root / "cache", root / "runs", recipe_in="b-input", recipe_out="b-pair", l_in=2, l_out=3,
                     epochs=epochs, batch_size=8, hidden_size=32)
    extract(root / "cache")
    train(cfg, save=False)  # warm-up of the training path
    t_cache, t_fresh = [], []
    for rep in range(3):
        t0 = time.perf_counter()
        train(cfg, save=False)
        t_cache.append(time.perf_counter() - t0)
        fresh = root / f"fresh-{rep}"
        t0 = time.perf_counter()
        extract(fresh)
        train(cfg.model_copy(update={"store": str(fresh)}), save=False)
        t_fresh.append(time.perf_counter() - t0)
    a, b = min(t_cache), min(t_fresh)
    print(f"[cache] {n} samples, {epochs} epochs, best of 3: training from the cache {a:.2f} s; re-extracting "
          f"the features through the tiny LLaVA and training {b:.2f} s -> the cache is {b / a:.2f}x faster")


def _write_store(url: Path, n: int, d: int, dtype: str = "float16"):
    import pyarrow as pa

    from l2s_data.schemas import MEMBERSHIPS, SAMPLES
    from l2s_data.store import Store

    rng = np.random.default_rng(0)
    store = Store.open(url, create=True)
    rin = store.put_recipe({"bench": "input", "d": d}, name="bench-input")
    rpair = store.put_recipe({"bench": "pair", "d": d}, name="bench-pair")
    ids = [f"b{i:07d}" for i in range(n)]
    w1 = rng.standard_normal((d, 64)).astype(np.float32) / np.sqrt(d)
    w2 = rng.standard_normal((64, d)).astype(np.float32)
    shard = 8192
    for s, lo in enumerate(range(0, n, shard)):
        x = rng.standard_normal((min(shard, n - lo), d)).astype(np.float32)
        y = np.tanh(x @ w1) @ w2
        with store.shard_writer(f"in-{s}", rin, ids[lo:lo + len(x)]) as w:
            w.write("input", "prompt_last", 1, x, dtype)
        with store.shard_writer(f"pair-{s}", rpair, ids[lo:lo + len(x)]) as w:
            w.write("p2s", "completion_last", 1, y, dtype)
    split = np.where(np.arange(n) % 10 == 0, "test", "train")
    samples = pa.table({"sample_id": ids, "query": ids, "image_path": ids, "image_sha256": ["0" * 64] * n,
                        "width": pa.array([1] * n, pa.int32()), "height": pa.array([1] * n, pa.int32())},
                       schema=SAMPLES)
    mem = pa.table({"dataset": ["bench"] * n, "subset": ["all"] * n, "question_id": ids, "sample_id": ids,
                    "category": ["c"] * n, "label": [None] * n, "split": split.tolist()}, schema=MEMBERSHIPS)
    store.put("samples", samples, memberships=mem)


def bench_epoch(root: Path, n: int, d: int, epochs: int) -> None:
    from l2s_data.store import Store
    from l2s_data.train import fit, load_data

    url = root / "epoch-store"
    _write_store(url, n, d)
    store = Store.open(url)
    res = {}
    for mode in (True, False):
        cfg = _train_cfg(url, root / "runs", recipe_in="bench-input", recipe_out="bench-pair", l_in=1, l_out=1,
                         epochs=1, in_memory=mode)
        data = load_data(cfg, store)
        fit(cfg, data)  # warm-up: page cache, chunk maps, allocator
        res[mode] = data, cfg
    times = {True: [], False: []}
    for _ in range(epochs):  # interleaved, one epoch each, best taken
        for mode in (True, False):
            data, cfg = res[mode]
            t0 = time.perf_counter()
            fit(cfg, data)
            times[mode].append(time.perf_counter() - t0)
    mem, stream = min(times[True]), min(times[False])
    rows = int(n * 0.9)
    print(f"[epoch] {rows} training rows x {d} float16 dims, batch 64, H=100, best of {epochs}: in-memory tensors "
          f"{mem:.2f} s/epoch ({rows / mem:,.0f} rows/s); streamed from the store {stream:.2f} s/epoch "
          f"({rows / stream:,.0f} rows/s) -> streamed/in-memory speed {mem / stream:.2f}x (target >= 0.8x)")


def bench_sweep(root: Path, k: int, w: int, n: int, d: int, epochs: int) -> None:
    import ray

    from l2s_data.store import Store
    from l2s_data.train import train
    from l2s_data.train.sweep import parse_sweep_config, run_sweep

    url = root / "sweep-store"
    _write_store(url, n, d, dtype="float32")
    base = {"store": str(url), "out_dir": str(root / "sweep-runs"), "name": "bench",
            "input": {"recipe": "bench-input", "position": "prompt_last", "layer": 1},
            "target": {"recipe": "bench-pair", "position": "completion_last", "layer": 1},
            "trainer": {"hidden_size": 100, "lr": 1e-3, "batch_size": 64, "epochs": epochs}}
    seeds = list(range(k))
    sweep = parse_sweep_config({"name": "bench-sweep", "base": base,
                                "sweep": {"max_concurrent": w, "cpus_per_trial": 1, "params": {"seed": seeds}}})
    from l2s_data.train import parse_train_config

    store = Store.open(url)
    train(parse_train_config({**base, "trainer": {**base["trainer"], "epochs": 1}}), store=store)  # warm-up
    each = []
    for s in seeds:
        t0 = time.perf_counter()
        train(parse_train_config({**base, "seed": s}), store=store)
        each.append(time.perf_counter() - t0)
    seq = sum(each)
    ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        t0 = time.perf_counter()
        run_sweep(sweep)
        par = time.perf_counter() - t0
    finally:
        ray.shutdown()
    target = 0.8 * min(k, w)
    print(f"[sweep] K={k} trainings of {epochs} epochs on {int(n * 0.9)} rows x {d}: one after another {seq:.1f} s "
          f"({seq / k:.1f} s each); "
          f"Ray Tune sweep on W={w} {par:.1f} s -> {seq / par:.2f}x (target >= 0.8 min(K, W) = {target:.1f}x; "
          f"{os.cpu_count()} CPUs on this host)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["cache", "sweep", "epoch"], action="append")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--k", type=int, default=4, help="sweep: trainings")
    ap.add_argument("--w", type=int, default=2, help="sweep: concurrent trials")
    args = ap.parse_args()
    only = set(args.only or ["cache", "sweep", "epoch"])
    q = args.quick
    with tempfile.TemporaryDirectory(prefix="l2s-bench-train-") as tmp:
        root = Path(tmp)
        if "cache" in only:
            bench_cache(root, n=26 if q else 52, epochs=20 if q else 50)
        if "epoch" in only:
            bench_epoch(root, n=8192 if q else 65536, d=256 if q else 1024, epochs=2 if q else 3)
        if "sweep" in only:
            bench_sweep(root, args.k, args.w, n=4096 if q else 1680, d=128 if q else 4096, epochs=3 if q else 100)


if __name__ == "__main__":
    main()
