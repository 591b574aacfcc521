"""The worker: one shard of samples -> model activations -> one committed store shard per recipe.

:class:`ExtractionWorker` is what a Ray actor will wrap (one per GPU): it is built from a
picklable :class:`ExtractJob`, loads its own adapter, dataset and store lazily, and exposes
``run_shard(shard)``. In one process, :meth:`ExtractionWorker.run` pipelines shards: the caller's
thread computes shard k+1 while a background thread writes and commits shard k (bounded queue,
so at most ``run.write_queue`` computed shards wait in memory).

A sample that fails (unreadable image, prompt too long, missing position...) is quarantined in
the store's errors table with its reason; the rest of the shard goes on.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from l2s_data.errors import DataSourceError, ExtractionError, InputError

from l2s_data.extract.config import ExtractConfig
from l2s_data.extract.plan import SampleItem, Shard, ShardPart
from l2s_data.extract.recipe import RecipeRef

__all__ = ["ExtractJob", "PreparedShard", "ShardResult", "ShardOutcome", "ExtractionWorker", "QUARANTINED"]

#: Errors that belong to one sample: quarantined, never fatal for the shard.
QUARANTINED = (InputError, DataSourceError)


@dataclass(frozen=True)
class ExtractJob:
    """Everything a worker needs, picklable (a Ray actor is built from this alone)."""

    config: ExtractConfig
    recipes: Mapping[str, RecipeRef]

    @property
    def completion(self) -> dict[str, Any]:
        pair = self.recipes.get("pair")
        return dict(pair.recipe.completion) if pair else {}


@dataclass
class ShardResult:
    """A computed shard, in memory: per recipe kind, the sample ids and their float32 rows.

    ``arrays[kind][(view, position, layer)]`` is a float32 CPU tensor ``[len(sample_ids[kind]), D]``
    with row i = ``sample_ids[kind][i]``; p2s was taken in float32 before any down-cast.
    """

    shard: Shard
    sample_ids: dict[str, list[str]] = field(default_factory=dict)
    arrays: dict[str, dict[tuple[str, str, int], torch.Tensor]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    compute_s: float = 0.0


@dataclass(frozen=True)
class PreparedShard:
    """A shard after loading and checking: ``ready`` rows (item, image) and error rows."""

    shard: Shard
    ready: list[tuple[SampleItem, Any]]
    errors: list[dict[str, Any]]
    seconds: float


@dataclass(frozen=True)
class ShardOutcome:
    """What committing a shard did. ``won[kind]`` False = another attempt committed it first."""

    shard_id: str
    samples: int
    keys: int
    quarantined: int
    won: Mapping[str, bool]
    compute_s: float
    write_s: float


def _row_order(item: SampleItem) -> tuple[int, str]:
    # Batch similar lengths together (less padding); deterministic, from the plan alone.
    extra = len(item.pair[0]) + max(len(item.pair[1]), len(item.pair[2])) if item.pair else 0
    return (len(item.query) + extra, item.sample_id)


class ExtractionWorker:
    """Computes and commits shards. ``adapter`` / ``store`` / ``dataset`` may be injected (tests,
    benchmarks); otherwise they are opened from the job's config on first use."""

    def __init__(self, job: ExtractJob, *, adapter: Any = None, store: Any = None, dataset: Any = None,
                 prefetch: bool | None = None):
        self.job = job
        self._adapter = adapter
        self._store = store
        self._dataset = dataset
        # Load-and-check the next shard in a thread while this one runs on the device. By
        # default off when a CPU forward already uses every core (see _prepared).
        self._prefetch = prefetch
        n = job.config.run.write_threads
        self._write_pool = ThreadPoolExecutor(n, thread_name_prefix="l2s-write") if n > 1 else None

    # -- lazily opened resources ---------------------------------------------------------
    @property
    def prefix_sharing(self) -> bool:
        """The config's choice, unless the adapter package has no prefix-shared path: then the
        three separate forwards (same keys, same numbers within dtype tolerance)."""
        if not self.job.config.run.prefix_sharing:
            return False
        import importlib.util

        return importlib.util.find_spec("l2s_data.models.prefix") is not None

    @property
    def adapter(self) -> Any:
        if self._adapter is None:
            self._adapter = self.job.config.model.load_adapter()
        return self._adapter

    @property
    def store(self) -> Any:
        if self._store is None:
            from l2s_data.store import Store

            self._store = Store.open(self.job.config.run.store, create=True)
        return self._store

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            from l2s_data.datasets import read_dataset

            self._dataset = read_dataset(self.job.config.data.path)
        return self._dataset

    # -- compute -------------------------------------------------------------------------
    def _error_rows(self, shard: Shard, item: SampleItem, stage: str, err: BaseException) -> list[dict[str, Any]]:
        """One errors-table row per recipe part of ``shard`` that needed ``item``."""
        return [{"recipe_id": part.recipe_id, "sample_id": item.sample_id, "stage": stage,
                 "error_type": type(err).__name__, "message": str(err), "shard": part.shard_id}
                for part in shard.parts if item.sample_id in part.sample_ids]

    def prepare_shard(self, shard: Shard) -> PreparedShard:
        """Load every image of ``shard`` and run ``adapter.check`` on it (CPU only, no forward).

        Failures become error rows (stage ``load`` or ``check``); the rest is ready to run.
        """
        t0 = time.perf_counter()
        need = {p.kind: set(p.sample_ids) for p in shard.parts}
        system = self.job.config.behavior.system
        ready: list[tuple[SampleItem, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in sorted(shard.items, key=_row_order):
            if not any(item.sample_id in ids for ids in need.values()):
                continue
            try:
                image = self.dataset.load_image(item.sample_id)
                self._check(item, image, need, system)
            except QUARANTINED as err:
                errors += self._error_rows(shard, item, "load" if isinstance(err, DataSourceError) else "check", err)
                continue
            ready.append((item, image))
        return PreparedShard(shard, ready, errors, time.perf_counter() - t0)

    def compute_shard(self, shard: Shard, prepared: PreparedShard | None = None) -> ShardResult:
        """Load, check and run every sample of ``shard``; nothing is written.

        ``prepared`` (from :meth:`prepare_shard`, possibly run ahead in another thread) skips
        the load-and-check step.
        """
        from l2s_data.models import ChatInput, ContrastiveItem

        prep = prepared if prepared is not None else self.prepare_shard(shard)
        t0 = time.perf_counter()
        res = ShardResult(shard, errors=list(prep.errors))
        need = {p.kind: set(p.sample_ids) for p in shard.parts}
        system = self.job.config.behavior.system
        rin, rpair = self.job.recipes.get("input"), self.job.recipes.get("pair")

        def quarantine(item: SampleItem, stage: str, err: BaseException) -> None:
            res.errors.extend(self._error_rows(shard, item, stage, err))

        ready = list(prep.ready)
        if rpair is not None and self.job.completion.get("max_new_tokens", 0) > 0:
            ready = self._extend_completions(ready, need.get("pair", set()), system, quarantine)

        pair_rows = [(it, im) for it, im in ready if it.sample_id in need.get("pair", ())]
        input_only = [(it, im) for it, im in ready
                      if it.sample_id in need.get("input", ()) and it.sample_id not in need.get("pair", ())]
        bs = self.job.config.run.batch_size
        outs: dict[str, list[tuple[list[str], dict[tuple[str, str, int], torch.Tensor]]]] = {"input": [], "pair": []}

        def items_of(batch: list[tuple[SampleItem, Any]]) -> tuple[list[Any], bool]:
            items = [ContrastiveItem(im, it.query, it.pair[0], it.pair[1], it.pair[2], system) for it, im in batch]
            # The input branch is skipped (empty layers) when no row of the batch needs it.
            with_input = rin is not None and any(it.sample_id in need.get("input", ()) for it, _ in batch)
            return items, with_input

        def encode(batch: list[tuple[SampleItem, Any]]) -> Any:
            items, with_input = items_of(batch)
            return self.adapter.encode_contrastive(items, (["input"] if with_input else []) + ["pos", "neg"])

        def contrastive(batch: list[tuple[SampleItem, Any]], encoded: Any = None) -> dict[tuple[str, str, int], torch.Tensor]:
            items, with_input = items_of(batch)
            return self.adapter.capture_contrastive(
                items,
                input_layers=list(rin.recipe.layers) if with_input else [],
                input_positions=list(rin.recipe.positions) if with_input else [],
                pair_layers=list(rpair.recipe.layers), pair_positions=list(rpair.recipe.positions),
                prefix_sharing=self.prefix_sharing, encoded=encoded)

        def plain(batch: list[tuple[SampleItem, Any]]) -> dict[tuple[str, str, int], torch.Tensor]:
            got = self.adapter.capture([ChatInput(im, it.query, system=system) for it, im in batch],
                                       layers=list(rin.recipe.layers), positions=list(rin.recipe.positions))
            return {("input", p, layer): t for (p, layer), t in got.items()}

        pair_batches = [pair_rows[i:i + bs] for i in range(0, len(pair_rows), bs)]
        input_batches = [input_only[i:i + bs] for i in range(0, len(input_only), bs)]
        # Lazy: each pair batch's fn is made just before it runs, so the next batch's encoding
        # overlaps this batch's forward.
        runs = itertools.chain(
            ((b, fn, True) for b, fn in zip(pair_batches, self._encoded_ahead(pair_batches, encode, contrastive))),
            ((b, plain, False) for b in input_batches))
        for batch, fn, is_pair in runs:
            for ok, out in self._run_batch(batch, fn, quarantine):
                ids = [it.sample_id for it, _ in ok]
                if rin is not None:
                    in_ids = [s for s in ids if s in need.get("input", ())]
                    if in_ids:
                        sel = _select(ids, in_ids)
                        outs["input"].append((in_ids, {k: _take(out[k], sel) for k in _keys(rin)}))
                if is_pair:
                    outs["pair"].append((ids, {k: out[k] for k in _keys(rpair)}))

        for kind, chunks in outs.items():
            if not chunks:
                continue
            ref = self.job.recipes[kind]
            res.sample_ids[kind] = [s for ids, _ in chunks for s in ids]
            res.arrays[kind] = {k: torch.cat([c[k] for _, c in chunks]).float() for k in _keys(ref)}
        res.compute_s = prep.seconds + time.perf_counter() - t0
        return res

    def _check(self, item: SampleItem, image: Any, need: Mapping[str, set[str]], system: str | None) -> None:
        """``adapter.check`` for one sample: the views it needs, at the recipes' layers and positions.

        A sample that needs pair views is checked as a ContrastiveItem (one image-processor
        call, all three views); the adapter checks completion positions on pos/neg only.
        """
        from l2s_data.models import ChatInput, ContrastiveItem

        rin, rpair = self.job.recipes.get("input"), self.job.recipes.get("pair")
        wants_in = rin is not None and item.sample_id in need.get("input", ())
        if rpair is not None and item.sample_id in need.get("pair", ()):
            layers = set(rpair.recipe.layers) | (set(rin.recipe.layers) if wants_in else set())
            positions = set(rpair.recipe.positions) | (set(rin.recipe.positions) if wants_in else set())
            self.adapter.check(ContrastiveItem(image, item.query, *item.pair, system=system),
                               layers=sorted(layers), positions=sorted(positions))
        elif wants_in:
            self.adapter.check(ChatInput(image, item.query, system=system),
                               layers=rin.recipe.layers, positions=rin.recipe.positions)

    def _extend_completions(self, ready, need_pair, system, quarantine):
        """Continuation: P_c and N_c each extended by up to max_new_tokens generated tokens.

        Seeded per shard batch, so a rerun of the same plan samples the same tokens (on the same
        device). The extended completions are re-checked against the context length.
        """
        from l2s_data.models import ChatInput

        comp = self.job.completion
        bs = self.job.config.run.batch_size
        out = []
        rows = [(it, im) for it, im in ready if it.sample_id in need_pair]
        rest = [(it, im) for it, im in ready if it.sample_id not in need_pair]
        for start in range(0, len(rows), bs):
            batch = rows[start:start + bs]
            ext: list[list[str]] = []
            for idx in (1, 2):
                chats = [ChatInput(im, it.query, it.pair[0], it.pair[idx], system) for it, im in batch]
                ext.append(self.adapter.generate(chats, max_new_tokens=int(comp["max_new_tokens"]),
                                                 do_sample=bool(comp.get("do_sample", False)),
                                                 seed=int(comp.get("seed", 0)) + start))
            for j, (it, im) in enumerate(batch):
                new = SampleItem(it.sample_id, it.query, (it.pair[0], it.pair[1] + ext[0][j], it.pair[2] + ext[1][j]))
                try:
                    self._check(new, im, {"pair": need_pair}, system)
                except QUARANTINED as err:
                    quarantine(it, "check", err)
                    continue
                out.append((new, im))
        return out + rest

    def _run_batch(self, batch, fn: Callable, quarantine) -> Iterable[tuple[list, dict]]:
        """Run a batch; if one sample breaks it, rerun one by one and quarantine the culprit."""
        if not batch:
            return []
        try:
            return [(batch, fn(batch))]
        except QUARANTINED as err:
            if len(batch) == 1:
                quarantine(batch[0][0], "forward", err)
                return []
        done = []
        for row in batch:
            try:
                done.append(([row], fn([row])))
            except QUARANTINED as err:
                quarantine(row[0], "forward", err)
        return done

    # -- write ---------------------------------------------------------------------------
    def write_shard(self, result: ShardResult) -> ShardOutcome:
        """Write every recipe part of a computed shard and commit it; record quarantined samples."""
        t0 = time.perf_counter()
        won: dict[str, bool] = {}
        keys = 0
        for part in result.shard.parts:
            ids = result.sample_ids.get(part.kind)
            if not ids:
                continue
            ref = self.job.recipes[part.kind]
            arrays = result.arrays[part.kind]
            dtype = ref.recipe.store_dtype
            keys_ = ref.recipe.keys()
            with self.store.shard_writer(part.shard_id, part.recipe_id, ids) as w:
                # The first key alone (it creates the attempt's folder), then the others from a
                # few threads: each key is its own Zarr array, a few mkdirs and file creates of
                # mostly I/O wait (about 2-4 ms with the store's direct writer), which threads
                # overlap.
                w.write(*keys_[0], arrays[keys_[0]].numpy(), dtype=dtype)
                rest = [(k, arrays[k].numpy()) for k in keys_[1:]]
                if self._write_pool is None or len(rest) < 2:
                    for k, a in rest:
                        w.write(*k, a, dtype=dtype)
                else:
                    list(self._write_pool.map(lambda ka: w.write(*ka[0], ka[1], dtype=dtype), rest))
            won[part.kind] = bool(getattr(w, "won", True))
            keys += len(ids) * ref.recipe.keys_per_sample
        if result.errors:
            self.store.put_errors(result.errors)
        n = len(set().union(*map(set, result.sample_ids.values()))) if result.sample_ids else 0
        return ShardOutcome(result.shard.shard_id, n, keys, len({e["sample_id"] for e in result.errors}),
                            won, result.compute_s, time.perf_counter() - t0)

    def _run_ahead(self) -> bool:
        """Whether to prepare the next shard / encode the next batch in a thread."""
        if self._prefetch is not None:
            return self._prefetch
        # auto: when the forward leaves a core free (an accelerator, or fewer torch threads
        # than cores), the processor and the image loads run on it
        return self.adapter.device.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)

    def _encoded_ahead(self, batches: list[list[Any]], encode: Callable, run: Callable) -> Iterator[Callable]:
        """Per batch in order, a ``fn(rows)`` for :meth:`_run_batch`: with run-ahead on, the
        processor has already encoded that batch in a thread while the previous one computed.

        A batch whose encoding failed, or a retry of single rows, encodes again in ``run``, so
        errors surface (and are quarantined) exactly as without run-ahead.
        """
        if not self._run_ahead() or len(batches) < 2:
            for _ in batches:
                yield run
            return
        with ThreadPoolExecutor(1, thread_name_prefix="l2s-encode") as pool:
            nxt = pool.submit(encode, batches[0])
            for i, batch in enumerate(batches):
                try:
                    enc = nxt.result()
                except Exception:  # noqa: BLE001 - re-raised by the plain path, per sample
                    enc = None
                if i + 1 < len(batches):
                    nxt = pool.submit(encode, batches[i + 1])
                yield lambda rows, _b=batch, _e=enc: run(rows, _e if rows is _b else None)

    def _prepared(self, shards: Sequence[Shard]) -> Iterator[PreparedShard | None]:
        """Yields, per shard in order, its PreparedShard (prefetching one ahead) or None."""
        prefetch = self._run_ahead()
        if not prefetch or not shards:
            for _ in shards:
                yield None
            return
        _ = self.adapter, self.dataset  # load both in this thread, before the helper starts
        with ThreadPoolExecutor(1, thread_name_prefix="l2s-prepare") as pool:
            nxt = pool.submit(self.prepare_shard, shards[0])
            for i in range(len(shards)):
                cur = nxt.result()
                if i + 1 < len(shards):
                    nxt = pool.submit(self.prepare_shard, shards[i + 1])
                yield cur

    def run_shard(self, shard: Shard) -> ShardOutcome:
        """Compute and commit one shard (the unit a Ray actor retries)."""
        return self.write_shard(self.compute_shard(shard))

    def run(self, shards: Sequence[Shard], *, on_done: Callable[[ShardOutcome], None] | None = None,
            write: bool = True) -> list[ShardOutcome]:
        """Compute shards in this thread while a background thread writes the previous ones.

        ``write=False`` computes and drops the results (benchmarks: extraction without writes).
        An error in either thread stops the run after the shards already computed are written.
        """
        outcomes: list[ShardOutcome] = []
        prepared = self._prepared(shards)
        if not write:
            for shard in shards:
                r = self.compute_shard(shard, next(prepared))
                o = ShardOutcome(shard.shard_id, len(set().union(*map(set, r.sample_ids.values()))), 0,
                                 len({e["sample_id"] for e in r.errors}), {}, r.compute_s, 0.0)
                outcomes.append(o)
                if on_done:
                    on_done(o)
            return outcomes
        _ = self.store  # open it here, not inside the writer thread
        q: queue.Queue[ShardResult | None] = queue.Queue(maxsize=self.job.config.run.write_queue)
        failed: list[BaseException] = []

        def writer() -> None:
            while (res := q.get()) is not None:
                if failed:
                    continue  # drain so the producer never blocks on a dead consumer
                try:
                    o = self.write_shard(res)
                    outcomes.append(o)
                    if on_done:
                        on_done(o)
                except BaseException as err:  # re-raised in the caller's thread below
                    failed.append(err)

        t = threading.Thread(target=writer, name="l2s-shard-writer", daemon=True)
        t.start()
        try:
            for shard in shards:
                if failed:
                    break
                q.put(self.compute_shard(shard, next(prepared)))
        finally:
            q.put(None)
            t.join()
            prepared.close()
        if failed:
            raise ExtractionError(f"writing a shard to {self.job.config.run.store!r} failed: {failed[0]}") from failed[0]
        return outcomes


def _keys(ref: RecipeRef) -> list[tuple[str, str, int]]:
    return ref.recipe.keys()


def _select(ids: Sequence[str], wanted: Sequence[str]) -> torch.Tensor:
    pos = {s: i for i, s in enumerate(ids)}
    return torch.tensor([pos[s] for s in wanted], dtype=torch.long)


def _take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, rows) if rows.numel() != t.shape[0] else t
