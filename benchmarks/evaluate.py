"""Steered generation and evaluation throughput against bare generation, on the same batches.

    python benchmarks/evaluate.py                 # CPU: a small random LLaVA, ~1 min
    python benchmarks/evaluate.py --hidden 512 --layers 8 --tokens 32 --repeats 5
    make bench-evaluate                           # the CPU run

Every number is samples/s measured in this run, with every response forced to ``--tokens``
new tokens (``min_new_tokens``), so all variants do the same work; the ratios are what to
compare:

- ``bare generate``     ``adapter.generate`` (left-padded batch, KV cache, greedy): the baseline;
- ``method none``       ``SteeredGenerator.generate`` of the unsteered method (the wrapper);
- ``steered (P2S*)``    the same with the steering hook adding alpha * v at L*, vectors given;
- ``evaluate unit``     ``EvalWorker.run_unit``: items opened from disk, P2S* vectors from the
                        cache, steered generation, scoring and a committed ``evaluations`` part;
- ``L2S h_X: cache``    the input view at L' read from the store (per batch), against
- ``L2S h_X: prefill``  the same rows computed by an unsteered prefill.

Variants run interleaved, ``--repeats`` times; the medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from l2s_data.datasets import make_synthetic
    from l2s_data.evaluate import Evaluation, parse_config
    from l2s_data.evaluate.generation import SteeredGenerator
    from l2s_data.evaluate.methods import get_method
    from l2s_data.evaluate.worker import EvalUnit
    from l2s_data.extract import Extraction
    from l2s_data.extract import parse_config as extract_config
    from l2s_data.models import ChatInput, load_adapter, make_tiny

    work = Path(tempfile.mkdtemp(prefix="l2s-bench-eval-"))
    ckpt = make_tiny("llava", work / "model", hidden_size=args.hidden, layers=args.layers)
    make_synthetic("synthetic-safety", work / "data", n=args.samples, test_fraction=0.99)
    adapter = load_adapter(ckpt)
    adapter.model.generation_config.min_new_tokens = args.tokens  # every variant makes the same tokens
    l_star, l_prime = 1, args.layers - 1
    Extraction(extract_config({
        "model": {"path": str(ckpt)}, "data": {"path": str(work / "data")},
        "behavior": {"behavior": "safety-llava"},
        "recipe": {"layers": [l_star, l_prime], "store_dtype": "float16"},
        "run": {"store": str(work / "store"), "batch_size": args.batch, "shard_size": 64, "name": "b"},
    }), adapter=adapter).run()

    def config(name: str):
        return parse_config({
            "model": {"path": str(ckpt)},
            "data": {"path": str(work / "data"), "split": "test", "behavior": "safety-llava"},
            "steering": {"layer": l_star, "methods": ["p2s"], "alphas": [2.0]},
            "cache": {"input_recipe": "b-input", "pair_recipe": "b-pair"},
            "l2s": {"input_layer": l_prime},
            "generation": {"max_new_tokens": args.tokens, "batch_size": args.batch},
            "run": {"store": str(work / "store"), "name": name},
        })

    ev = Evaluation(config("bench-0"), adapter=adapter)
    ids = sorted(ev.infos)[: args.samples]
    items = [ev.load_item(s) for s in ids]
    batches = [items[i:i + args.batch] for i in range(0, len(items), args.batch)]
    worker = ev.worker()
    gen: SteeredGenerator = worker.generator
    none, p2s = get_method("none"), get_method("p2s")
    vectors = [gen.vectors(p2s, b) for b in batches]
    chats = [[ChatInput(it.image, it.query) for it in b] for b in batches]

    def bare():
        for c in chats:
            adapter.generate(c, max_new_tokens=args.tokens)

    def wrapped():
        for b in batches:
            gen.generate(none, None, b)

    def steered():
        for b, v in zip(batches, vectors):
            gen.generate(p2s, 2.0, b, vectors=v)

    def unit():  # the rows are committed again on every repeat: a new part each time
        worker.run_unit(EvalUnit("p2s", (2.0,), tuple(ids)))

    def h_cache():
        for b in batches:
            gen.input_states(b)

    nocache = SteeredGenerator(adapter, type(gen.sources)(steer_layer=l_star, input_layer=l_prime), max_new_tokens=1)

    def h_prefill():
        for b in batches:
            nocache.input_states(b)

    # The same rows both ways (the cache holds them in float16).
    torch.testing.assert_close(torch.cat([gen.input_states(b) for b in batches]),
                               torch.cat([nocache.input_states(b) for b in batches]), atol=2e-3, rtol=2e-3)
    variants = {"bare generate": bare, "method none": wrapped, "steered (P2S*)": steered, "evaluate unit": unit,
                "L2S h_X: cache": h_cache, "L2S h_X: prefill": h_prefill}
    times: dict[str, list[float]] = {k: [] for k in variants}
    bare()  # warm-up
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    rate = {k: len(items) / statistics.median(v) for k, v in times.items()}
    print(f"LLaVA-shaped random model: hidden {args.hidden}, {args.layers} layers; {len(items)} samples, batch "
          f"{args.batch}, {args.tokens} new tokens; torch threads {torch.get_num_threads()}; "
          f"median of {args.repeats}")
    print(f"{'variant':<20} {'samples/s':>10} {'ratio':>8}")
    for k in ("bare generate", "method none", "steered (P2S*)", "evaluate unit"):
        print(f"{k:<20} {rate[k]:>10.2f} {rate[k] / rate['bare generate']:>7.2f}x  (vs bare generate)")
    for k in ("L2S h_X: prefill", "L2S h_X: cache"):
        print(f"{k:<20} {rate[k]:>10.2f} {rate[k] / rate['L2S h_X: prefill']:>7.2f}x  (vs prefill)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
