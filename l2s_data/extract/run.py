"""One extraction, end to end: resolve a config, plan against the store, run in-process.

::

    from l2s_data.extract import Extraction

    ex = Extraction.from_file("l2s_data/extract/configs/tiny-llava.toml")
    print(ex.dry_run().plan.missing_keys)     # what a run would compute
    report = ex.run()                         # computes only the missing keys
    report.computed_samples                   # 0 on a second run

Resolution order for every recipe field: the config's ``[recipe]`` value, else the preset's
task value (``[behavior] preset`` + ``task``), else the clean default (``prompt_last``,
``completion_last``, all layers, no continuation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from l2s_data.behaviors import load_behavior, load_preset
from l2s_data.datasets import DatasetTables, read_dataset
from l2s_data.errors import BehaviorError, ConfigError, StoreNotFoundError

from l2s_data.extract.config import ExtractConfig, load_config, parse_layers
from l2s_data.extract.plan import Plan, SampleItem, Shard, complete_samples, make_plan
from l2s_data.extract.recipe import ModelIdentity, Recipe, RecipeRef, local_recipe_id, make_recipes
from l2s_data.extract.shard import ExtractJob, ShardOutcome
from l2s_data.extract.worker import ExtractionWorker

if TYPE_CHECKING:  # transformers and DuckDB: imported when a model or a store is opened
    from l2s_data.models import ModelAdapter
    from l2s_data.store import Snapshot, Store

__all__ = ["Extraction", "DryRun", "RunReport"]


@dataclass(frozen=True)
class DryRun:
    """What ``l2s extract --dry-run`` prints. ``seconds`` is None when not calibrated."""

    plan: Plan
    seconds: float | None
    calibration: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunReport:
    """What a run did. ``computed_samples == 0`` means the store already had every key."""

    store: str
    recipe_ids: Mapping[str, str]
    plan: Plan
    outcomes: tuple[ShardOutcome, ...]
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def computed_samples(self) -> int:
        return sum(o.samples for o in self.outcomes)

    @property
    def written_keys(self) -> int:
        return sum(o.keys for o in self.outcomes)

    @property
    def quarantined(self) -> int:
        return sum(o.quarantined for o in self.outcomes)

    @property
    def lost_races(self) -> int:
        return sum(1 for o in self.outcomes for won in o.won.values() if not won)


@dataclass
class _Resolved:
    items: list[SampleItem]
    conflicts: dict[str, str] = field(default_factory=dict)  # sample id -> why it has no pair


class Extraction:
    """A config bound to its data, behavior, model and store (each opened on first use)."""

    def __init__(self, config: ExtractConfig, *, adapter: ModelAdapter | None = None, store: Store | None = None,
                 dataset: DatasetTables | None = None):
        self.config = config
        self._adapter = adapter
        self._store = store
        self._dataset = dataset

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> "Extraction":
        return cls(load_config(path), **kwargs)

    # -- inputs --------------------------------------------------------------------------
    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = read_dataset(self.config.data.path)
        return self._dataset

    @property
    def adapter(self) -> ModelAdapter:
        if self._adapter is None:
            self._adapter = self.config.model.load_adapter()
        return self._adapter

    @cached_property
    def task(self) -> Any:
        """The preset's task settings (a ``TaskPreset``), or None without a preset."""
        b = self.config.behavior
        if b.preset is None:
            if b.task is not None:
                raise ConfigError(f"[behavior] task = {b.task!r} needs a preset; add preset = \"<name>\" "
                                  f"or remove task")
            return None
        if b.task is None:
            raise ConfigError(f"[behavior] preset = {b.preset!r} needs task = \"safety\" or \"pope\"")
        preset = load_preset(b.preset)
        family = getattr(self.adapter, "family", None)
        if family is not None and preset.family != family:
            raise ConfigError(f"preset {b.preset!r} is for {preset.family!r} models, but {self.config.model.path!r} "
                              f"is a {family!r} model; pick the preset of that family")
        return preset.task(b.task)

    @cached_property
    def behavior(self) -> Any:
        if self.config.behavior.behavior is not None:
            return load_behavior(self.config.behavior.behavior)
        if self.task is not None:
            return load_behavior(self.task.behavior)
        return None

    @cached_property
    def selection(self) -> tuple[pa.Table, pa.Table]:
        """(samples, memberships) of the selected data: filters on memberships, then ``limit``."""
        d, ds = self.config.data, self.dataset
        mem = ds.memberships
        for col, values in (("split", d.splits), ("dataset", d.datasets), ("subset", d.subsets),
                            ("category", d.categories)):
            if values:
                mem = mem.filter(pc.is_in(mem[col], pa.array(values, pa.string())))
        ids = sorted(set(mem["sample_id"].to_pylist()))
        if d.limit:
            ids = ids[:d.limit]
        id_arr = pa.array(ids, pa.string())
        mem = mem.filter(pc.is_in(mem["sample_id"], id_arr))
        samples = ds.samples.filter(pc.is_in(ds.samples["sample_id"], id_arr))
        if samples.num_rows == 0:
            raise ConfigError(f"the data selection of {d.path!r} is empty (splits={d.splits}, datasets={d.datasets}, "
                              f"subsets={d.subsets}, categories={d.categories}); loosen [data] filters")
        return samples, mem

    @cached_property
    def _resolved(self) -> _Resolved:
        samples, mem = self.selection
        queries = dict(zip(samples["sample_id"].to_pylist(), samples["query"].to_pylist()))
        pairs: dict[str, set[tuple[str, str, str]]] = {}
        if self.behavior is not None and self.wants_pairs:
            cats = set()
            for sid, cat, label in zip(mem["sample_id"].to_pylist(), mem["category"].to_pylist(),
                                       mem["label"].to_pylist()):
                try:
                    p = self.behavior.pair_for(cat, label)
                except BehaviorError as err:
                    raise ConfigError(f"behavior {self.behavior.name!r} cannot pair sample {sid} "
                                      f"(category {cat!r}, label {label!r}): {err}. Filter [data] "
                                      f"categories or pick a behavior that covers them") from None
                cats.add(cat)
                pairs.setdefault(sid, set()).add((p.suffix, p.positive, p.negative))
        items, conflicts = [], {}
        for sid in sorted(queries):
            got = pairs.get(sid)
            if got is not None and len(got) > 1:
                # The same (image, query) in categories with different pairs: its pos/neg key
                # would be ambiguous, so the sample is quarantined for the pair recipe.
                conflicts[sid] = f"memberships give {len(got)} different contrastive pairs: {sorted(got)}"
                got = None
            items.append(SampleItem(sid, queries[sid], next(iter(got)) if got else None))
        return _Resolved(items, conflicts)

    @property
    def wants_pairs(self) -> bool:
        return any(v in self.config.recipe.views for v in ("pos", "neg", "p2s"))

    # -- recipes -------------------------------------------------------------------------
    @cached_property
    def recipes(self) -> dict[str, Recipe]:
        """The input / pair recipes this config asks for (needs the model's fingerprint)."""
        r, t, a = self.config.recipe, self.task, self.adapter
        n = a.num_layers
        layers = parse_layers(r.layers, num_layers=n)
        in_layers = parse_layers(r.input_layers, num_layers=n) if r.input_layers is not None else layers
        pair_layers = parse_layers(r.pair_layers, num_layers=n) if r.pair_layers is not None else layers
        in_pos = r.input_positions or ([t.input_position] if t else ["prompt_last"])
        if r.pair_positions:
            pair_pos = r.pair_positions
        elif t is not None:
            # Per-category overrides (Qwen reference: sequence_last-1 on 10-13) are all stored
            # for every sample; a training config's target.position_overrides (filled from the
            # preset) then reads each category's target at its own position.
            pair_pos = [t.pair_position, *t.pair_position_overrides.values()]
        else:
            pair_pos = ["completion_last"]
        if r.completion is not None:
            comp = r.completion.model_dump()
        elif t is not None:
            comp = t.completion.model_dump()
        else:
            comp = {"max_new_tokens": 0}
        if not comp.get("max_new_tokens"):
            comp = {"max_new_tokens": 0}  # no continuation: seed and sampling change nothing
        elif not comp.get("do_sample"):
            comp.pop("seed", None)  # greedy: the seed changes nothing
        ident = ModelIdentity.of(a, attn_implementation=self.config.model.attn_implementation)
        return make_recipes(
            model=ident, hidden_size=a.hidden_size, views=r.views, input_positions=in_pos,
            pair_positions=pair_pos, input_layers=in_layers, pair_layers=pair_layers,
            store_dtype=r.store_dtype, behavior_spec=self.behavior.spec() if self.behavior is not None else None,
            completion=comp if self.wants_pairs else None, system=self.config.behavior.system)

    def notes(self) -> list[str]:
        """Human hints: preset layers outside the extracted range, conflicting samples."""
        out = []
        if self.task is not None:
            for kind, layer, name in (("input", self.task.input_layer, "L' (input_layer)"),
                                      ("pair", self.task.steer_layer, "L* (steer_layer)")):
                rec = self.recipes.get(kind)
                if rec is not None and layer not in rec.layers:
                    out.append(f"the preset's {name} = {layer} is not among the extracted {kind} layers "
                               f"{_span(rec.layers)}; training at that layer will find no keys")
        if self._resolved.conflicts:
            out.append(f"{len(self._resolved.conflicts)} sample(s) have conflicting pairs and are quarantined")
        return out

    # -- store ---------------------------------------------------------------------------
    def open_store(self, *, create: bool) -> Store:
        if self._store is None:
            from l2s_data.store import Store  # DuckDB: loaded when a store is opened, not on import

            try:
                self._store = Store.open(self.config.run.store, create=create)
            except StoreNotFoundError:
                if create:
                    raise
                return None
        return self._store

    def plan(self, *, store: Store | None = None, refs: Mapping[str, RecipeRef] | None = None) -> Plan:
        """Plan against ``store`` (None: an empty store, every key missing)."""
        if refs is None:
            refs = {k: RecipeRef(r, local_recipe_id(r.spec())) for k, r in self.recipes.items()}
        complete: dict[str, set[str]] = {}
        quarantined: dict[str, set[str]] = {k: set() for k in refs}
        if store is not None:
            snap = store.snapshot()
            for kind, ref in refs.items():
                t = snap.committed_keys(ref.recipe_id)
                rows = zip(t["view"].to_pylist(), t["position"].to_pylist(), t["layer"].to_pylist(),
                           t["sample_id"].to_pylist())
                complete[kind] = complete_samples(rows, ref)
            if not self.config.run.retry_errors:
                for kind, got in _quarantined(store, refs, snap).items():
                    quarantined[kind] |= got
        if "pair" in refs:
            quarantined["pair"] |= set(self._resolved.conflicts)
        return make_plan(self._resolved.items, refs, complete=complete, shard_size=self.config.run.shard_size,
                         quarantined=quarantined)

    def job(self, refs: Mapping[str, RecipeRef]) -> ExtractJob:
        return ExtractJob(self.config, dict(refs))

    # -- verbs ---------------------------------------------------------------------------
    def dry_run(self, *, calibrate: bool = True) -> DryRun:
        """Plan without writing anything; optionally time one batch to estimate the run."""
        store = self.open_store(create=False)
        refs = None
        if store is not None:
            refs = {k: RecipeRef(r, store.recipe_id(r.spec()) if hasattr(store, "recipe_id")
                                 else local_recipe_id(r.spec())) for k, r in self.recipes.items()}
        plan = self.plan(store=store, refs=refs)
        seconds, how = None, "not calibrated (pass --calibrate to time one batch)"
        if calibrate and plan.shards:
            first = plan.shards[0]
            n = min(self.config.run.batch_size, len(first.items))
            keep = {it.sample_id for it in first.items[:n]}
            probe = Shard(first.shard_id, first.items[:n], tuple(
                type(p)(p.kind, p.recipe_id, p.shard_id, tuple(s for s in p.sample_ids if s in keep))
                for p in first.parts if any(s in keep for s in p.sample_ids)))
            worker = ExtractionWorker(self.job(plan.recipes), adapter=self.adapter, dataset=self.dataset)
            worker.compute_shard(probe)  # warm-up: first-call costs (allocator, kernels) excluded
            t0 = time.perf_counter()
            worker.compute_shard(probe)
            per = (time.perf_counter() - t0) / n
            seconds = per * plan.samples_to_compute
            how = f"one batch of {n} sample(s) timed on {self.config.model.device}: {1 / per:.2f} samples/s"
        return DryRun(plan, seconds, how, tuple(self.notes()))

    def prepare(self) -> tuple[Any, dict[str, RecipeRef], Plan]:
        """What every run does before computing, in process or on Ray: register the recipes and
        the samples, quarantine samples whose memberships give conflicting pairs, and plan.
        Returns the store, the recipe refs per kind and the plan."""
        store = self.open_store(create=True)
        name = self.config.run.name
        refs = {k: RecipeRef(r, store.put_recipe(r.spec(), name=f"{name}-{k}" if name else None))
                for k, r in self.recipes.items()}
        samples, mem = self.selection
        store.put("samples", samples, memberships=mem)
        plan = self.plan(store=store, refs=refs)
        new_conflicts = _new_conflicts(store, refs, self._resolved.conflicts)
        if new_conflicts:
            store.put("errors", new_conflicts)
        return store, refs, plan

    def run(self, *, on_done: Callable[[ShardOutcome], None] | None = None,
            on_plan: Callable[[Plan], None] | None = None) -> RunReport:
        """Prepare (see :meth:`prepare`), compute the missing keys in this process, commit."""
        t0 = time.perf_counter()
        store, refs, plan = self.prepare()
        if on_plan:
            on_plan(plan)
        outcomes: list[ShardOutcome] = []
        if plan.shards:
            worker = ExtractionWorker(self.job(refs), adapter=self.adapter, store=store, dataset=self.dataset)
            outcomes = worker.run(plan.shards, on_done=on_done)
        return RunReport(str(getattr(store, "url", self.config.run.store)), {k: r.recipe_id for k, r in refs.items()},
                         plan, tuple(outcomes), time.perf_counter() - t0, tuple(self.notes()))


def _quarantined(store: Store, refs: Mapping[str, RecipeRef], snap: Snapshot | None = None) -> dict[str, set[str]]:
    """Samples with a recorded error per recipe kind (skipped unless ``retry_errors``)."""
    kinds = {r.recipe_id: k for k, r in refs.items()}
    out: dict[str, set[str]] = {k: set() for k in refs}
    t = store.sql("SELECT recipe_id, sample_id FROM errors WHERE sample_id IS NOT NULL", snapshot=snap)
    for rid, sid in zip(t["recipe_id"].to_pylist(), t["sample_id"].to_pylist()):
        if sid is not None and rid in kinds:
            out[kinds[rid]].add(sid)
    return out


def _new_conflicts(store: Store, refs: Mapping[str, RecipeRef], conflicts: Mapping[str, str]) -> list[dict]:
    if not conflicts or "pair" not in refs:
        return []
    rid = refs["pair"].recipe_id
    known = _quarantined(store, {"pair": refs["pair"]})["pair"]
    return [{"recipe_id": rid, "sample_id": sid, "shard": None, "stage": "plan", "error_type": "ConflictingPairs",
             "message": why} for sid, why in sorted(conflicts.items()) if sid not in known]


def _span(layers: tuple[int, ...]) -> str:
    if layers and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return str(list(layers))
