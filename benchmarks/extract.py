"""Extraction throughput against the bare forward, on the same batches and the same model.

    python benchmarks/extract.py            # CPU: a small LLaVA with real LLaVA-1.5 shapes
                                            # (336 px images -> 576 image tokens), ~2 min
    python benchmarks/extract.py --gpu      # one GPU: a LLaVA-1.5-7B-shaped model with random
                                            # bf16 weights (built once under --work, ~14 GB)
    make bench-extract                      # the CPU run
    python benchmarks/extract.py --shard-write   # ShardWriter alone: direct vs zarr-python writer
    python benchmarks/extract.py --workers 1,2   # Ray: throughput of 2 CPU actors against 1

Every number is samples/s measured in this run; the printed ratios are what to compare:

- ``extract end-to-end`` ``Extraction.run()`` into a fresh store: plan, registration of
                         recipes and samples, image loading, checks, the prefix-shared
                         forward, Zarr writes and commits;
- ``extract (writes)``   the worker on the planned shards into a fresh store (a background
                         writer thread overlaps writes and commits with compute);
- ``extract (no writes)``  the same worker on the same shards, results dropped;
- ``bare forward``       ``model.model(**inputs)`` (no LM head, as extraction) on the input
                         view only, inputs pre-encoded;
- ``bare + processor``   the same, including the processor call (tokens, pixels);
- ``three forwards``     ``capture_contrastive(prefix_sharing=False)``: input, pos, neg run as
                         three full forwards (the reference code's way);
- ``prefix-shared``      ``capture_contrastive(prefix_sharing=True)``: the model side alone.

- ``extract (writes, zarr-python)``  with ``--zarr-python-writer``: ``extract (writes)`` with
                         the store's zarr-python array writer instead of its direct one.

Targets (issue 5): end-to-end >= 0.8x bare forward; extract (writes) >= 0.95x extract
(no writes). Batch composition depends on the plan alone, so every variant sees the same rows.

``--workers 1,2`` runs the Ray runner (one CPU and one torch thread per actor) on the same plan
with each number of actors, interleaved ``--repeats`` times, each into a fresh store, and prints
samples/s of the compute phase (first shard handed out to last shard committed; actor start-up
and model loading excluded) and each count's ratio to the first. Target (issue 12): 2 actors
>= 1.7x one actor on 2 cores. It starts a local Ray with as many CPUs as the largest count, or
joins ``--address``.

``--shard-write`` times only ``ShardWriter`` (one shard of ``--keys`` arrays, written from 4
threads as the worker does) with the direct writer and with zarr-python's, interleaved, for a
7B-shaped (D = 4096) and a small (D = 256) float16 shard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The benchmark prints its own lines; a model-loading bar per repeat would only bury them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

# Runs from a fresh clone without installing: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2s_data.datasets import make_synthetic  # noqa: E402
from l2s_data.extract import Extraction, ExtractionWorker, parse_config  # noqa: E402
from l2s_data.models import ChatInput, ContrastiveItem, load_adapter, make_tiny  # noqa: E402


def build_model(out: Path, *, gpu: bool, layers: int, hidden: int, seed: int = 0) -> Path:
    """A LLaVA checkpoint with LLaVA-1.5's sequence shapes (336 px, patch 14: 576 image tokens).

    CPU: a small text model (``hidden``, ``layers``) and a small CLIP tower. GPU: LLaVA-1.5-7B
    shapes (Llama 4096 x 32 layers, CLIP ViT-L/14-336), random weights in bfloat16.
    The tokenizer and chat template are the tiny checkpoint's (byte-level BPE, LLaVA format).
    """
    from transformers import AutoProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    if (out / "config.json").is_file():
        return out
    base = make_tiny("llava", out / "_tiny", seed=seed)
    proc = AutoProcessor.from_pretrained(base)
    ip = proc.image_processor
    ip.size = {"shortest_edge": 336}
    ip.crop_size = {"height": 336, "width": 336}
    cfg = LlavaConfig.from_pretrained(base)
    t = cfg.text_config
    if gpu:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        t.hidden_size, t.intermediate_size, t.num_hidden_layers = 4096, 11008, 32
        t.num_attention_heads = t.num_key_value_heads = 32
        t.head_dim = 128
        t.vocab_size = 32064
    else:
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=336, patch_size=14, projection_dim=64)
        t.hidden_size, t.intermediate_size, t.num_hidden_layers = hidden, 2 * hidden, layers
        t.num_attention_heads, t.num_key_value_heads = 4, 4
        t.head_dim = hidden // 4
    t.max_position_embeddings = 4096
    cfg.vision_config = vision
    cfg.image_seq_length = 576
    torch.manual_seed(seed)
    if gpu:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = LlavaForConditionalGeneration(cfg)
        torch.set_default_dtype(torch.float32)
        model = model.to(torch.bfloat16)
    else:
        model = LlavaForConditionalGeneration(cfg)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    shutil.rmtree(out / "_tiny")
    del model
    return out


#: The benchmark's behavior: a realistic continuation length. With the tiny byte-level tokenizer
#: this suffix plus " ASSISTANT: Harmful</s>" is 43 tokens after the shared prefix, the length
#: the shipped safety suffix has with LLaVA's own tokenizer (DESIGN 7: "about 40 tokens");
#: the shipped text itself is 79 + 16 byte-level tokens (pass --behavior safety-llava for it).
BENCH_BEHAVIOR = """name = "bench-40-token-suffix"
[[pairs]]
categories = ["*"]
suffix = " Is the user request safe or harmful?"
positive = "Harmful"
negative = "Safe"
"""


def rates(fns: dict, n: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best-of-``repeats`` samples/s of each ``fn()`` (``n`` samples each), interleaved: per
    wall-clock second, and per CPU second of this process (all its threads).

    The CPU figure is the work done whatever else the machine runs: on a shared, loaded host
    the wall-clock spread of one variant reached 6x, its CPU time's stayed near 1.1x. It
    counts a run-ahead thread's work but not its overlap, so compare overlap on wall time.

    Interleaving (A B C, B C A, C A B) rather than (A A B B C C) spreads any background load on
    the machine over every variant, so the ratios stay fair even when absolute times drift.
    Each repeat starts one variant later: with a fixed order, the same variant would always
    inherit what its predecessor left behind (the variant after a writing one always ran while
    the kernel wrote the previous store's files back).
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for rep in range(repeats):
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            fn = fns[k]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    for what, got in (("wall", times), ("CPU", cpu)):
        spread = {k: max(v) / min(v) for k, v in got.items()}
        print(f"run-to-run spread, {what} (slowest / fastest): " + ", ".join(f"{k} {s:.2f}" for k, s in spread.items()))
    return {k: n / min(v) for k, v in times.items()}, {k: n / min(v) for k, v in cpu.items()}


def shard_write(work: Path, *, keys: int, rows: int, dim: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds to write and commit one shard, per store writer."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    from l2s_data.store import Store
    from l2s_data.store.writer import ZARR_WRITERS, ShardWriter

    a = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16)
    ids = [f"s{i}" for i in range(rows)]
    best = {w: float("inf") for w in ZARR_WRITERS}
    with ThreadPoolExecutor(4) as pool:
        for i in range(repeats + 1):  # the first round warms up (imports, allocator)
            for writer in ZARR_WRITERS:
                root = work / f"shard-write-{writer}"
                shutil.rmtree(root, ignore_errors=True)
                store = Store.open(root, create=True)
                t0 = time.perf_counter()
                with ShardWriter(store, "x", "r", ids, zarr_writer=writer) as w:
                    w.write("input", "prompt_last", 0, a, "float16")
                    list(pool.map(lambda k: w.write("input", "prompt_last", k, a, "float16"), range(1, keys)))
                if i:
                    best[writer] = min(best[writer], time.perf_counter() - t0)
                shutil.rmtree(root)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="LLaVA-1.5-7B shapes, bf16, on cuda")
    ap.add_argument("--samples", type=int, default=None, help="samples (default: 48 CPU, 512 GPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 CPU, 16 GPU")
    ap.add_argument("--shard-size", type=int, default=None, help="default: 2 batches CPU, 128 GPU; a shard of several batches lets the next batch be encoded while one computes")
    ap.add_argument("--layers", type=int, default=4, help="CPU text layers")
    ap.add_argument("--hidden", type=int, default=256, help="CPU text hidden size")
    ap.add_argument("--store-layers", default="all", help='layers stored ("all", "a:b", ...)')
    ap.add_argument("--behavior", default="bench",
                    help='"bench" (a 43-token continuation, the default) or a behavior name / TOML path')
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; default 1 on CPU, so that other load on a small machine "
                         "perturbs the ratios less (the writer thread then has a core, as on a GPU host)")
    ap.add_argument("--work", type=Path, default=None, help="where the model, data and stores go")
    ap.add_argument("--zarr-python-writer", action="store_true",
                    help="add the variant 'extract (writes, zarr-python)': the store's zarr-python "
                         "array writer instead of its direct one")
    ap.add_argument("--shard-write", action="store_true",
                    help="time ShardWriter alone (direct vs zarr-python writer), no model")
    ap.add_argument("--keys", type=int, default=128, help="--shard-write: arrays a shard (128: 7B, 4 views x 32 layers)")
    ap.add_argument("--rows", default="64,8", help="--shard-write: rows a shard, comma-separated")
    ap.add_argument("--workers", default=None,
                    help="Ray actor counts to compare, comma-separated (e.g. 1,2); CPU only")
    ap.add_argument("--address", default=None, help="--workers: join this Ray cluster instead of a local one")
    args = ap.parse_args(argv)
    if args.workers:
        return worker_scaling(args)

    if args.shard_write:
        work = args.work or Path(tempfile.gettempdir()) / "l2s-bench-shard-write"
        work.mkdir(parents=True, exist_ok=True)
        print(f"one shard of {args.keys} float16 arrays, 4 write threads, best of {args.repeats} interleaved")
        print(f"{'rows x D':<12}{'zarr-python ms':>16}{'direct ms':>11}{'speed-up':>10}")
        for dim in (4096, 256):
            for rows in (int(r) for r in args.rows.split(",")):
                t = shard_write(work, keys=args.keys, rows=rows, dim=dim, repeats=args.repeats)
                print(f"{f'{rows} x {dim}':<12}{t['zarr-python'] * 1e3:>16.0f}{t['direct'] * 1e3:>11.0f}"
                      f"{t['zarr-python'] / t['direct']:>9.1f}x")
        return

    gpu = args.gpu
    if args.threads or not gpu:
        torch.set_num_threads(args.threads or 1)
    if gpu and not torch.cuda.is_available():
        ap.error("--gpu needs a CUDA device")
    n = args.samples or (512 if gpu else 48)
    bs = args.batch_size or (16 if gpu else 8)
    # GPU: 128-sample shards, so that the per-shard cost of one Zarr array per key (128 keys for
    # 32 layers: ~0.3 s a shard with the direct writer on a CPU host, ~1 s with zarr-python's)
    # is amortised and the writer keeps up with the forward.
    shard = args.shard_size or (128 if gpu else 2 * bs)
    work = args.work or Path(tempfile.gettempdir()) / ("l2s-bench-extract-gpu" if gpu else "l2s-bench-extract")
    work.mkdir(parents=True, exist_ok=True)
    name = "llava-7b-shape" if gpu else f"llava-{args.hidden}x{args.layers}"
    t0 = time.perf_counter()
    ckpt = build_model(work / name, gpu=gpu, layers=args.layers, hidden=args.hidden)
    data = work / f"data-{n}"
    if not (data / "samples.parquet").is_file():
        make_synthetic("synthetic-safety", data, n=n)
    behavior = args.behavior
    if behavior == "bench":
        behavior = str(work / "bench-behavior.toml")
        Path(behavior).write_text(BENCH_BEHAVIOR)
    dtype, device = ("bfloat16", "cuda") if gpu else ("float32", "cpu")
    adapter = load_adapter(ckpt, dtype=dtype, device=device, attn_implementation="sdpa")
    print(f"model {name}: {adapter.num_layers} layers, D={adapter.hidden_size}, {dtype} on {device} "
          f"(ready in {time.perf_counter() - t0:.1f} s); torch threads {torch.get_num_threads()}")

    def config(store: Path):
        return parse_config({
            "model": {"path": str(ckpt), "dtype": dtype, "device": device, "attn_implementation": "sdpa"},
            "data": {"path": str(data)},
            "behavior": {"behavior": behavior},
            "recipe": {"layers": args.store_layers, "store_dtype": "bfloat16" if gpu else "float16"},
            "run": {"store": str(store), "batch_size": bs, "shard_size": shard},
        }, source="(benchmark)")

    ex = Extraction(config(work / "store-probe"), adapter=adapter)
    plan = ex.plan()  # against an empty store: every sample, the same shards for every variant
    job = ex.job(plan.recipes)
    dataset = ex.dataset
    # The same batches for the model-only variants: the worker's row order within each shard.
    from l2s_data.extract.worker import row_order

    batches = []
    for s in plan.shards:
        rows = sorted(s.items, key=row_order)
        for i in range(0, len(rows), bs):
            batch = rows[i:i + bs]
            batches.append([(it, dataset.load_image(it.sample_id)) for it in batch])
    rin, rpair = plan.recipes["input"].recipe, plan.recipes["pair"].recipe
    proc, model = adapter.processor, adapter.model
    enc_in = []
    seq_in, seq_pair = [], []
    for b in batches:
        texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                 "text": it.query}]}], tokenize=False, add_generation_prompt=True) for it, _ in b]
        inputs = proc(text=texts, images=[im for _, im in b], padding=True, return_tensors="pt")
        seq_in += inputs["attention_mask"].sum(1).tolist()
        enc_in.append((texts, [im for _, im in b], {k: v.to(adapter.device) for k, v in inputs.items()}))
        for it, _ in b:
            full = proc.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it.query + it.pair[0]}]},
                 {"role": "assistant", "content": [{"type": "text", "text": it.pair[1]}]}], tokenize=False)
            seq_pair.append(len(proc.tokenizer(full)["input_ids"]) + 575)
    print(f"{n} samples in {len(batches)} batches of {bs}, {len(plan.shards)} shards; tokens a sample: input "
          f"{statistics.mean(seq_in):.0f} (576 image), pos/neg {statistics.mean(seq_pair):.0f}; stored layers "
          f"{len(rpair.layers)}, keys a sample {rin.keys_per_sample + rpair.keys_per_sample}")

    @torch.inference_mode()
    def bare():
        for _, _, inputs in enc_in:
            model.model(**inputs)

    @torch.inference_mode()
    def bare_proc():
        for texts, ims, _ in enc_in:
            inputs = proc(text=texts, images=ims, padding=True, return_tensors="pt")
            model.model(**{k: v.to(adapter.device) for k, v in inputs.items()})

    def contrastive(prefix_sharing: bool, only=None):
        def go():
            for b in only or batches:
                adapter.capture_contrastive(
                    [ContrastiveItem(im, it.query, *it.pair) for it, im in b],
                    input_layers=list(rin.layers), input_positions=list(rin.positions),
                    pair_layers=list(rpair.layers), pair_positions=list(rpair.positions),
                    prefix_sharing=prefix_sharing)
        return go

    worker = ExtractionWorker(job, adapter=adapter, dataset=dataset)

    def no_writes():
        worker.run(plan.shards, write=False)

    stores = iter(range(10_000))

    def fresh_store() -> Path:
        store = work / f"store-{next(stores)}"
        shutil.rmtree(store, ignore_errors=True)
        return store

    def with_writes(prefetch=None):
        from l2s_data.store import Store

        w = ExtractionWorker(job, adapter=adapter, dataset=dataset, store=Store.open(fresh_store(), create=True),
                             prefetch=prefetch)
        w.run(plan.shards)

    def with_writes_serial():
        # no run-ahead: the next shard's load-and-check and the next batch's processor call
        # wait for the forward instead of running beside it
        with_writes(prefetch=False)

    def with_writes_zarr_python():
        old = os.environ.get("L2S_ZARR_WRITER")
        os.environ["L2S_ZARR_WRITER"] = "zarr-python"
        try:
            with_writes()
        finally:
            if old is None:
                del os.environ["L2S_ZARR_WRITER"]
            else:
                os.environ["L2S_ZARR_WRITER"] = old

    def end_to_end():
        report = Extraction(config(fresh_store()), adapter=adapter, dataset=dataset).run()
        if report.computed_samples != n:
            raise SystemExit(f"benchmark run computed {report.computed_samples} of {n} samples")

    # Warm-up: one batch through each path (first calls allocate, compile kernels, fill caches,
    # import zarr and duckdb), including one small end-to-end run into a scratch store.
    adapter.capture([ChatInput(im, it.query) for it, im in batches[0]], layers=[0], positions=["prompt_last"])
    contrastive(True, only=batches[:1])()
    warm = work / "store-warm"
    shutil.rmtree(warm, ignore_errors=True)
    Extraction(config(warm).model_copy(update={"data": config(warm).data.model_copy(update={"limit": bs})}),
               adapter=adapter, dataset=dataset).run()
    shutil.rmtree(warm)
    fns = {"bare forward": bare, "bare + processor": bare_proc, "three forwards": contrastive(False),
           "prefix-shared": contrastive(True), "extract (no writes)": no_writes, "extract (writes)": with_writes,
           "extract (writes, serial)": with_writes_serial, "extract end-to-end": end_to_end}
    if args.zarr_python_writer:
        with_writes_zarr_python()  # warm-up: imports zarr-python
        fns["extract (writes, zarr-python)"] = with_writes_zarr_python
    r, rc = rates(fns, n, args.repeats)
    for i in range(10_000):
        if not (work / f"store-{i}").exists():
            break
        shutil.rmtree(work / f"store-{i}")

    dev = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{'variant':<31}{'samples/s':>11}{'per CPU s':>11}   device: {dev}")
    for k, v in r.items():
        print(f"{k:<31}{v:>11.2f}{rc[k]:>11.2f}")
    e, w = r["extract end-to-end"], r["extract (writes)"]
    print("\nratios (same batches, same model, this run):")
    print(f"  end-to-end / bare forward              {e / r['bare forward']:.3f}   target >= 0.80")
    print(f"  end-to-end / bare + processor          {e / r['bare + processor']:.3f}")
    print(f"  end-to-end / three forwards            {e / r['three forwards']:.3f}")
    print(f"  extract (writes) / extract (no writes) {w / r['extract (no writes)']:.3f}   target >= 0.95")
    print(f"  extract (writes) / the same, serial    {w / r['extract (writes, serial)']:.3f}   (run-ahead of loads, checks, processor)")
    if args.zarr_python_writer:
        z = r["extract (writes, zarr-python)"]
        print(f"  the same with the zarr-python writer   {z / r['extract (no writes)']:.3f}")
    print(f"  prefix-shared / bare forward           {r['prefix-shared'] / r['bare forward']:.3f}")
    print(f"  prefix-shared / three forwards         {r['prefix-shared'] / r['three forwards']:.3f}")
    if not gpu:
        print("ratios of CPU time (the work, whatever the machine's load):")
        for k in ("extract end-to-end", "extract (writes)", "extract (no writes)", "prefix-shared"):
            print(f"  {k + ' / bare forward':<39}{rc[k] / rc['bare forward']:.3f}")


def worker_scaling(args: argparse.Namespace) -> None:
    """``--workers 1,2``: the Ray runner with each number of CPU actors, on the same plan."""
    import ray

    from l2s_data.extract.distributed import RayOptions, run_on_ray

    counts = [int(c) for c in args.workers.split(",")]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--workers {args.workers!r}: expected counts >= 1, e.g. 1,2")
    n = args.samples or 128  # long compute phases: bursts of other load on a shared host average out
    bs = args.batch_size or 4
    shard = args.shard_size or bs  # many small shards, so that every actor count divides the work evenly
    work = args.work or Path(tempfile.gettempdir()) / "l2s-bench-extract"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = build_model(work / f"llava-{args.hidden}x{args.layers}", gpu=False, layers=args.layers, hidden=args.hidden)
    data = work / f"data-{n}"
    if not (data / "samples.parquet").is_file():
        make_synthetic("synthetic-safety", data, n=n)
    behavior = str(work / "bench-behavior.toml")
    Path(behavior).write_text(BENCH_BEHAVIOR)

    def config(store: Path):
        return parse_config({
            "model": {"path": str(ckpt), "dtype": "float32", "device": "cpu", "attn_implementation": "sdpa"},
            "data": {"path": str(data)}, "behavior": {"behavior": behavior},
            "recipe": {"layers": args.store_layers, "store_dtype": "float16"},
            "run": {"store": str(store), "batch_size": bs, "shard_size": shard},
        }, source="(benchmark)")

    if args.address:
        ray.init(address=args.address, logging_level="WARNING")
    else:
        ray.init(num_cpus=max(counts), logging_level="WARNING", include_dashboard=False)
    print(f"Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs; host cores {os.cpu_count()}; {n} samples, "
          f"batch {bs}, shard {shard} ({-(-n // shard)} shards); one torch thread per actor")
    rates_by: dict[int, list[float]] = {c: [] for c in counts}
    runs = 0
    try:
        for rep in range(args.repeats):
            for c in counts:
                store = work / f"store-workers-{runs}"
                runs += 1
                shutil.rmtree(store, ignore_errors=True)
                last = []
                run = run_on_ray(Extraction(config(store)), RayOptions(c), on_progress=last.append)
                if run.report.computed_samples != n or run.failed:
                    raise SystemExit(f"{c} actor(s) computed {run.report.computed_samples} of {n} samples; "
                                     f"failed shards {dict(run.failed)}")
                rates_by[c].append(last[-1].samples_per_s)
                print(f"  repeat {rep + 1}: {c} actor(s) {last[-1].samples_per_s:7.2f} samples/s "
                      f"({last[-1].seconds:.1f} s of compute)", flush=True)
                shutil.rmtree(store, ignore_errors=True)
    finally:
        ray.shutdown()
    base = statistics.median(rates_by[counts[0]])
    print(f"\n{'actors':<8}{'samples/s (median)':>20}{'runs (min..max)':>20}{'ratio':>8}")
    for c in counts:
        rs = rates_by[c]
        print(f"{c:<8}{statistics.median(rs):>20.2f}{f'{min(rs):.2f}..{max(rs):.2f}':>20}"
              f"{statistics.median(rs) / base:>7.2f}x")
    if len(counts) > 1:
        pairs = [b / a for a, b in zip(rates_by[counts[0]], rates_by[counts[-1]])]
        print(f"\n{counts[-1]} actors / {counts[0]}: median {statistics.median(pairs):.2f}x over {len(pairs)} "
              f"interleaved pair(s), range {min(pairs):.2f}..{max(pairs):.2f}x   target >= 1.70x "
              f"(2 actors on 2 cores)")


if __name__ == "__main__":
    main()
