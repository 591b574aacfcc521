"""The worker: one shard of samples -> model activations -> one committed store shard per recipe.

:class:`ExtractionWorker` is what a Ray actor wraps (one per GPU): it is built from a
picklable :class:`ExtractJob`, opens its own adapter, dataset and store on first use, and
exposes one unit of work, :meth:`ExtractionWorker.run_shard`. :meth:`ExtractionWorker.run`
(the in-process loop) runs the same three steps over many shards.

A shard goes through three steps, and all of the worker's concurrency is one bounded
pipeline over them (:mod:`l2s_data.extract.pipeline`):

1. **prepare** (a thread, ahead): per batch of the plan, load the images, tokenize every view
   of every sample once, and check it (context length, positions); CPU only;
2. **compute** (the caller's thread): sampled continuations when the recipe asks for them,
   then one capture per batch; results gather into the shard's arrays;
3. **write** (a thread, behind): one Zarr shard per recipe part, committed, and the errors
   table rows of the samples quarantined on the way.

``run_shard`` prepares ahead batch by batch and writes at the end (its outcome says whether
the commit won); ``run`` also writes shard k while shard k + 1 computes.

The values a shard passes through (the job, batches, results, outcomes) are in
:mod:`l2s_data.extract.shard`.

A sample that fails (unreadable image, prompt too long, missing position...) is quarantined in
the store's errors table with its reason; the rest of the shard goes on. Batches come from the
plan alone (rows sorted by length, cut every ``batch_size``), minus quarantined samples.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image

from l2s_data.datasets import DatasetTables, read_dataset
from l2s_data.errors import DataSourceError, ExtractionError
from l2s_data.extract.pipeline import run_pipeline
from l2s_data.extract.plan import SampleItem, Shard
from l2s_data.extract.shard import (
    QUARANTINED, Batch, ExtractJob, Key, Kind, Row, ShardAccumulator, ShardOutcome, ShardResult, row_order,
)
from l2s_data.models.encoding import EncodedItems
from l2s_data.models.types import ChatInput, ContrastiveItem

if TYPE_CHECKING:
    from l2s_data.models import ModelAdapter
    from l2s_data.store import Store

__all__ = ["ExtractionWorker"]


class ExtractionWorker:
    """Computes and commits shards. ``adapter`` / ``store`` / ``dataset`` may be injected (tests,
    benchmarks); otherwise they are opened from the job's config on first use.

    ``prefetch``: prepare the next batches in a thread while the model computes. None (the
    default) does so when the forward leaves a core free (an accelerator, or fewer torch
    threads than cores); on a CPU whose cores the forward already uses, the thread would only
    slow it down.
    """

    def __init__(self, job: ExtractJob, *, adapter: ModelAdapter | None = None, store: Store | None = None,
                 dataset: DatasetTables | None = None, prefetch: bool | None = None):
        self.job = job
        self._adapter = adapter
        self._store = store
        self._dataset = dataset
        self.prefetch = prefetch
        self._input = job.recipes.get("input")
        self._pair = job.recipes.get("pair")

    # -- lazily opened resources ---------------------------------------------------------
    @property
    def adapter(self) -> ModelAdapter:
        if self._adapter is None:
            self._adapter = self.job.config.model.load_adapter()
        return self._adapter

    @property
    def store(self) -> Store:
        if self._store is None:
            from l2s_data.store import Store  # DuckDB: loaded when a store is opened, not on import

            self._store = Store.open(self.job.config.run.store, create=True)
        return self._store

    @property
    def dataset(self) -> DatasetTables:
        if self._dataset is None:
            self._dataset = read_dataset(self.job.config.data.path)
        return self._dataset

    # -- the unit of work ----------------------------------------------------------------
    def run_shard(self, shard: Shard) -> ShardOutcome:
        """Prepare, compute, write and commit one shard (the unit a Ray actor retries)."""
        (outcome,) = self._pipeline([shard], write=True)
        return outcome

    def run(self, shards: Sequence[Shard], *, on_done: Callable[[ShardOutcome], None] | None = None,
            write: bool = True) -> list[ShardOutcome]:
        """:meth:`run_shard` over ``shards``, shard k written while shard k + 1 computes.

        ``write=False`` computes and drops the results (benchmarks: extraction without writes).
        An error stops the run after the shards already computed are written.
        """
        outcomes = []
        for o in self._pipeline(shards, write=write):
            outcomes.append(o)
            if on_done:
                on_done(o)
        return outcomes

    def compute_shard(self, shard: Shard) -> ShardResult:
        """Prepare and compute ``shard`` in this thread; nothing is written (dry-run timing)."""
        acc = ShardAccumulator(shard)
        for batch in self.prepare(shard):
            self._compute_into(acc, batch)
        return acc.finish(self.job.recipes)

    def _pipeline(self, shards: Sequence[Shard], *, write: bool) -> Iterator[ShardOutcome]:
        if not shards:
            return iter(())
        _ = self.adapter, self.dataset  # open both in this thread, before the prepare thread starts
        if write:
            _ = self.store
        accs: dict[str, ShardAccumulator] = {}

        def compute(batch: Batch) -> Iterator[ShardResult]:
            acc = accs.setdefault(batch.shard.shard_id, ShardAccumulator(batch.shard))
            self._compute_into(acc, batch)
            if batch.last:
                yield accs.pop(batch.shard.shard_id).finish(self.job.recipes)

        def dropped(res: ShardResult) -> ShardOutcome:
            return ShardOutcome(res.shard.shard_id, res.samples, 0, res.quarantined, {}, res.compute_s, 0.0)

        def written(res: ShardResult) -> ShardOutcome:
            try:
                return self.write_shard(res)
            except Exception as err:  # the store's own error, named, with the shard
                raise ExtractionError(f"writing shard {res.shard.shard_id} to {self.job.config.run.store!r} "
                                      f"failed: {err}") from err

        return run_pipeline(shards, self.prepare, compute, written if write else dropped,
                            depth=self.job.config.run.write_queue, ahead=self._ahead())

    def _ahead(self) -> bool:
        if self.prefetch is not None:
            return self.prefetch
        return self.adapter.device.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)

    # -- prepare -------------------------------------------------------------------------
    def _error_rows(self, shard: Shard, item: SampleItem, stage: str, err: BaseException) -> list[dict[str, object]]:
        """One errors-table row per recipe part of ``shard`` that needed ``item``."""
        return [{"recipe_id": part.recipe_id, "sample_id": item.sample_id, "stage": stage,
                 "error_type": type(err).__name__, "message": str(err), "shard": part.shard_id}
                for part in shard.parts if item.sample_id in part.sample_ids]

    def _groups(self, shard: Shard) -> list[tuple[Kind, bool, list[SampleItem]]]:
        """The shard's samples by what they need: pair views with input, pair views alone,
        input alone; each sorted by length."""
        need = {p.kind: set(p.sample_ids) for p in shard.parts}
        pair, inp = need.get("pair", set()), need.get("input", set())
        items = sorted(shard.items, key=row_order)
        return [("pair", True, [it for it in items if it.sample_id in pair and it.sample_id in inp]),
                ("pair", False, [it for it in items if it.sample_id in pair and it.sample_id not in inp]),
                ("input", True, [it for it in items if it.sample_id in inp and it.sample_id not in pair])]

    def prepare(self, shard: Shard) -> Iterator[Batch]:
        """The shard's batches, each loaded, tokenized and checked (CPU only, no forward).

        Failures become error rows (stage ``load`` or ``check``) of the batch they were in.
        A shard with no sample to run still yields one empty last batch, so that it gets an
        outcome.
        """
        bs = self.job.config.run.batch_size
        cuts = [(kind, with_input, items[i:i + bs]) for kind, with_input, items in self._groups(shard)
                for i in range(0, len(items), bs)]
        if not cuts:
            cuts = [("pair", False, [])]
        order = {it.sample_id: k for k, it in enumerate(sorted(shard.items, key=row_order))}
        for n, (kind, with_input, items) in enumerate(cuts):
            t0 = time.perf_counter()
            rows, encs, errors = [], [], []
            for item in items:
                try:
                    image = self.dataset.load_image(item.sample_id)
                    enc = self._encode_checked(kind, with_input, item, image)
                except QUARANTINED as err:
                    stage = "load" if isinstance(err, DataSourceError) else "check"
                    errors += self._error_rows(shard, item, stage, err)
                    continue
                rows.append(Row(item, image))
                encs.append(enc)
            encoded = None
            if rows and kind == "pair" and not self.job.continuation.max_new_tokens:
                encoded = EncodedItems.concat(encs)
            first = order[items[0].sample_id] if items else 0
            yield Batch(shard, kind, with_input, tuple(rows), encoded, tuple(errors), first, n == len(cuts) - 1,
                        time.perf_counter() - t0)

    def _views(self, with_input: bool) -> list[str]:
        return (["input"] if with_input else []) + ["pos", "neg"]

    def _want(self, with_input: bool) -> dict[str, list[str]]:
        pair = list(self._pair.recipe.positions)
        want = {"pos": pair, "neg": pair}
        if with_input:
            want["input"] = list(self._input.recipe.positions)
        return want

    def _contrastive(self, row: Row, continuations: tuple[tuple[int, ...], tuple[int, ...]] | None = None
                     ) -> ContrastiveItem:
        suffix, pos, neg = row.item.pair
        cont = continuations or (None, None)
        return ContrastiveItem(row.image, row.item.query, suffix, pos, neg, self.job.config.behavior.system,
                               cont[0], cont[1])

    def _encode_checked(self, kind: Kind, with_input: bool, item: SampleItem, image: Image.Image
                        ) -> EncodedItems | None:
        """Tokenize one sample's views and check them; raises what a capture would raise."""
        if kind == "input":
            self.adapter.check(ChatInput(image, item.query, system=self.job.config.behavior.system),
                               layers=self._input.recipe.layers, positions=self._input.recipe.positions)
            return None
        enc = self.adapter.encode_contrastive([self._contrastive(Row(item, image))], self._views(with_input))
        self.adapter.check_encoded(enc, self._want(with_input))
        return enc

    # -- compute -------------------------------------------------------------------------
    def _compute_into(self, acc: ShardAccumulator, batch: Batch) -> None:
        t0 = time.perf_counter()
        res = acc.result
        res.errors.extend(batch.errors)
        rows, encoded = list(batch.rows), batch.encoded
        if rows and batch.kind == "pair" and self.job.continuation.max_new_tokens:
            rows, encoded = self._continue(batch, res.errors)
        if rows:
            run = self._capture_pair if batch.kind == "pair" else self._capture_input
            for ok, out in self._run_batch(batch, rows, encoded, run, res.errors):
                ids = [r.item.sample_id for r in ok]
                if batch.with_input:
                    acc.add("input", ids, {k: out[k] for k in self._input.recipe.keys()})
                if batch.kind == "pair":
                    acc.add("pair", ids, {k: out[k] for k in self._pair.recipe.keys()})
        res.compute_s += batch.seconds + time.perf_counter() - t0

    def _capture_pair(self, batch: Batch, rows: list[Row], encoded: EncodedItems) -> dict[Key, torch.Tensor]:
        with_input = batch.with_input
        return self.adapter.capture_contrastive(
            [self._contrastive(r) for r in rows],
            input_layers=list(self._input.recipe.layers) if with_input else [],
            input_positions=list(self._input.recipe.positions) if with_input else [],
            pair_layers=list(self._pair.recipe.layers), pair_positions=list(self._pair.recipe.positions),
            prefix_sharing=self.job.config.run.prefix_sharing, encoded=encoded)

    def _capture_input(self, batch: Batch, rows: list[Row], encoded: None) -> dict[Key, torch.Tensor]:
        got = self.adapter.capture([ChatInput(r.image, r.item.query, system=self.job.config.behavior.system)
                                    for r in rows],
                                   layers=list(self._input.recipe.layers), positions=list(self._input.recipe.positions))
        return {("input", p, layer): t for (p, layer), t in got.items()}

    def continuations(self, rows: Sequence[Row], seed: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Generated token ids that continue each row's positive and negative completion.

        One ``generate`` call per side for the whole batch, seeded with ``seed``; the ids
        are what the model generated (end of sequence and padding dropped, the last one too
        unless ``include_last_generated``), never decoded text.
        """
        c = self.job.continuation
        system = self.job.config.behavior.system
        sides = []
        for idx in (1, 2):
            chats = [ChatInput(r.image, r.item.query, r.item.pair[0], r.item.pair[idx], system) for r in rows]
            sides.append(self.adapter.generate_ids(chats, max_new_tokens=c.max_new_tokens, do_sample=c.do_sample,
                                                   seed=seed, include_last=c.include_last_generated))
        return list(zip(sides[0], sides[1], strict=True))

    def generation_seed(self, batch: Batch) -> int:
        """The seed of a batch's continuations: the recipe's seed plus the index of the batch's
        first planned sample in its shard's row order (from the plan alone, so a rerun of the
        same plan samples the same tokens on the same device)."""
        return self.job.continuation.seed + batch.first_row

    def _continue(self, batch: Batch, errors: list[dict[str, object]]) -> tuple[list[Row], EncodedItems | None]:
        """Continue the batch's completions and encode the extended sequences; samples whose
        extended sequences fail the checks (e.g. too long) are quarantined."""
        rows = list(batch.rows)
        conts = self.continuations(rows, self.generation_seed(batch))
        ok, encs = [], []
        for row, cont in zip(rows, conts, strict=True):
            try:
                enc = self.adapter.encode_contrastive([self._contrastive(row, cont)], self._views(batch.with_input))
                self.adapter.check_encoded(enc, self._want(batch.with_input))
            except QUARANTINED as err:
                errors.extend(self._error_rows(batch.shard, row.item, "check", err))
                continue
            ok.append(row)
            encs.append(enc)
        return ok, (EncodedItems.concat(encs) if encs else None)

    def _run_batch(self, batch: Batch, rows: list[Row], encoded: EncodedItems | None, fn: Callable,
                   errors: list[dict[str, object]]) -> list[tuple[list[Row], dict[Key, torch.Tensor]]]:
        """Run a batch; if one sample breaks it, rerun one by one and quarantine the culprit."""
        try:
            return [(rows, fn(batch, rows, encoded))]
        except QUARANTINED as err:
            if len(rows) == 1:
                errors.extend(self._error_rows(batch.shard, rows[0].item, "forward", err))
                return []
        done = []
        for i, row in enumerate(rows):
            try:
                done.append(([row], fn(batch, [row], None if encoded is None else encoded.select([i]))))
            except QUARANTINED as err:
                errors.extend(self._error_rows(batch.shard, row.item, "forward", err))
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
            with self.store.shard_writer(part.shard_id, part.recipe_id, ids) as w:
                for k in ref.recipe.keys():
                    w.write(*k, arrays[k].numpy(), dtype=ref.recipe.store_dtype)
            won[part.kind] = bool(w.won)
            keys += len(ids) * ref.recipe.keys_per_sample
        if result.errors:
            self.store.put("errors", result.errors)
        return ShardOutcome(result.shard.shard_id, result.samples, keys, result.quarantined,
                            won, result.compute_s, time.perf_counter() - t0)
