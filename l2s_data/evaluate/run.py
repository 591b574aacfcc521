"""An evaluation run: plan the missing (method, alpha, sample) rows, generate and score them.

::

    ev = Evaluation.from_file("l2s_data/evaluate/configs/tiny-llava.toml")
    plan = ev.plan()               # what the store lacks: a rerun skips committed rows
    report = ev.run()              # in-process; returns what was computed
    store.sql("SELECT method, alpha, count(*) FROM evaluations GROUP BY ALL")

The run id is ``[run] name`` or a hash of the config, so running the same config again picks up
where the store stands. The run's resolved config is committed to the ``runs`` table
(kind "evaluate"), and the selected samples and memberships to the store's own tables, so a
report needs the store alone.

Ray: :meth:`Evaluation.plan` cuts the work into :class:`~.worker.EvalUnit` shards and
:meth:`Evaluation.worker` builds the :class:`~.worker.EvalWorker` that runs one; a Ray runner
gives each actor (one per GPU) a worker and maps the units over them, as extraction does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from l2s_data.behaviors import load_behavior
from l2s_data.datasets import read_dataset
from l2s_data.errors import BehaviorError, ConfigError, KeyNotFoundError
from l2s_data.evaluate.config import EvalConfig, config_identity, load_config
from l2s_data.evaluate.generation import EvalItem, SteeredGenerator
from l2s_data.evaluate.identity import identity_from_path
from l2s_data.evaluate.judges import load_judges
from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.pairs import live_p2s_count, resolve_pair_positions, trained_pair_positions
from l2s_data.evaluate.protocols import EvalModel, EvalStore
from l2s_data.evaluate.sources import ActivationCache, VectorSources
from l2s_data.evaluate.texts import load_texts
from l2s_data.evaluate.vectors import PredictorFile, load_predictor, load_vector, mean_from_cache
from l2s_data.evaluate.worker import EvalUnit, EvalWorker, SampleInfo, UnitOutcome
from l2s_data.steer.selection import query
from l2s_data.store import Store

__all__ = ["Evaluation", "EvalPlan", "EvalReport", "committed_rows"]


def committed_rows(store: EvalStore, run_id: str) -> set[tuple[str, float | None, str]]:
    """(method, alpha, sample_id) of every row the store holds for ``run_id``."""
    t = query(store, "SELECT DISTINCT method, alpha, sample_id FROM evaluations WHERE run_id = ?", [run_id])
    return set(zip(t["method"].to_pylist(), t["alpha"].to_pylist(), t["sample_id"].to_pylist()))


@dataclass(frozen=True)
class EvalPlan:
    run_id: str
    units: tuple[EvalUnit, ...]
    total_rows: int        # (method, alpha, sample) rows the config asks for
    missing_rows: int      # of them, not yet committed

    @property
    def samples_to_generate(self) -> int:
        return self.missing_rows


@dataclass(frozen=True)
class EvalReport:
    run_id: str
    store: str
    plan: EvalPlan
    outcomes: tuple[UnitOutcome, ...] = ()
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def computed_rows(self) -> int:
        return sum(o.samples for o in self.outcomes)


class Evaluation:
    """One evaluation config, bound to its model, data set and store (each loaded on first use)."""

    def __init__(self, config: EvalConfig, *, adapter: EvalModel | None = None, store: EvalStore | None = None, dataset: Any = None,
                 guard: Any = None, quality: Any = None, predictor: Any = None):
        self.config = config
        self._given = {"adapter": adapter, "store": store, "dataset": dataset, "guard": guard, "quality": quality,
                       "predictor": predictor}

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Evaluation:
        return cls(load_config(path), **kwargs)

    @property
    def run_id(self) -> str:
        return self.config.run_id

    # -- inputs ---------------------------------------------------------------------------
    @cached_property
    def adapter(self) -> EvalModel:
        if self._given["adapter"] is not None:
            return self._given["adapter"]
        from l2s_data.models import load_adapter  # transformers: loaded only when a model is

        m = self.config.model
        return load_adapter(m.path, dtype=m.dtype, device=m.device, attn_implementation=m.attn_implementation)

    @cached_property
    def store(self) -> EvalStore:
        if self._given["store"] is not None:
            return self._given["store"]
        return Store.open(self.config.run.store, create=True)

    @cached_property
    def dataset(self) -> Any:
        if self._given["dataset"] is not None:
            return self._given["dataset"]
        return read_dataset(self.config.data.path)

    def _filtered(self, split: str) -> pa.Table:
        d, mem = self.config.data, self.dataset.memberships
        mem = mem.filter(pc.equal(mem["split"], split))
        for col, values in (("dataset", d.datasets), ("subset", d.subsets), ("category", d.categories)):
            if values:
                mem = mem.filter(pc.is_in(mem[col], pa.array(values, pa.string())))
        return mem

    @cached_property
    def selection(self) -> tuple[pa.Table, pa.Table]:
        """(samples, memberships) evaluated: the split and filters of [data], then ``limit``."""
        d = self.config.data
        mem = self._filtered(d.split)
        ids = sorted(set(mem["sample_id"].to_pylist()))
        if d.limit:
            ids = ids[:d.limit]
        arr = pa.array(ids, pa.string())
        mem = mem.filter(pc.is_in(mem["sample_id"], arr))
        samples = self.dataset.samples.filter(pc.is_in(self.dataset.samples["sample_id"], arr))
        if samples.num_rows == 0:
            raise ConfigError(f"the evaluation selects no sample of {d.path!r} (split={d.split!r}, datasets="
                              f"{d.datasets}, subsets={d.subsets}, categories={d.categories}); loosen [data].")
        return samples, mem

    @cached_property
    def infos(self) -> dict[str, SampleInfo]:
        _, mem = self.selection
        by: dict[str, list[dict]] = {}
        for row in mem.to_pylist():
            by.setdefault(row["sample_id"], []).append(row)
        out = {}
        for sid, rows in by.items():
            rows.sort(key=lambda r: (r["dataset"], r["subset"], r["question_id"]))

            def one(key: str) -> Any:
                values = {r[key] for r in rows}
                return values.pop() if len(values) == 1 else None

            out[sid] = SampleInfo(sid, rows[0]["dataset"], one("question_id"), one("category"), one("label"))
        return out

    @cached_property
    def _pairs(self) -> dict[str, tuple[str, str, str]]:
        name = self.config.data.behavior
        if not name:
            return {}
        behavior = load_behavior(name)
        out = {}
        for sid, info in self.infos.items():
            try:
                p = behavior.pair_for(info.category, info.label) if info.category is not None else None
            except BehaviorError:
                p = None
            if p is not None:
                out[sid] = (p.suffix, p.positive, p.negative)
        return out

    def load_item(self, sample_id: str) -> EvalItem:
        return EvalItem(sample_id, self.dataset.load_image(sample_id), self.dataset.query(sample_id),
                        self.config.data.task, self._pairs.get(sample_id))

    # -- vectors --------------------------------------------------------------------------
    def _methods(self) -> list[str]:
        return list(self.config.steering.methods)

    def sources(self) -> VectorSources:
        """Everything the configured methods draw their vectors from; missing pieces are named
        here, before any generation."""
        c, s, cache_cfg = self.config, self.config.steering, self.config.cache
        methods = self._methods()
        snap = self.store.snapshot()
        pf = self._predictor() if "l2s" in methods else None
        input_key, target_key = (pf.input_key or {}, pf.target_key or {}) if pf is not None else ({}, {})
        input_layer = self._agree("[l2s] input_layer", c.l2s.input_layer, input_key.get("layer"), "L'")
        if "l2s" in methods and input_layer is None:
            raise ConfigError("method L2S needs [l2s] input_layer (L', the layer its predictor reads); its file "
                              "does not record it.")
        self._agree("[steering] layer", s.layer, target_key.get("layer"), "L*")
        input_position = self._agree("[cache] input_position", cache_cfg.input_position or None,
                                     input_key.get("position"), "the input position") or "prompt_last"
        positions = self._pair_positions(pf)
        input_recipe = cache_cfg.input_recipe or None
        if input_recipe is None and input_key.get("recipe") and self._recipe_id(input_key["recipe"]):
            input_recipe = input_key["recipe"]  # the predictor's own training recipe, when this store has it
            self._check_recipe_model("input_recipe (the predictor's)", input_recipe, input_recipe)
        rids: dict[str, str] = {}  # resolved once: the cache reads by id
        for key in ("input_recipe", "pair_recipe", "ba_recipe"):
            name = getattr(cache_cfg, key)
            if name:
                rid = self._recipe_id(name)
                if rid is None:
                    raise ConfigError(f"[cache] {key} = {name!r} is not a recipe id or name in store "
                                      f"{self.store.url}; list them with `l2s sql \"SELECT recipe_id, name FROM "
                                      f"recipes\"`.")
                self._check_recipe_model(key, name, rid)
                rids[key] = rid
        cache = ActivationCache(snap, input_recipe=rids.get("input_recipe", input_recipe),
                                pair_recipe=rids.get("pair_recipe"))
        # One scale per method: with target scaling, every vector is on the predictor's targets' scale.
        scales = dict(pf.target_scales or {}) if pf is not None else {}
        train_mem = self._filtered("train")
        cat_of = dict(zip(train_mem["sample_id"].to_pylist(), train_mem["category"].to_pylist()))
        cat_of.update({sid: info.category for sid, info in self.infos.items()})
        scale_of = {sid: scales.get(c, 1.0) for sid, c in cat_of.items()} if scales else {}
        position_of = {sid: positions.of(c) for sid, c in cat_of.items() if positions.of(c) != positions.default}
        src = VectorSources(steer_layer=s.layer, input_layer=input_layer, input_position=input_position,
                            pair_position=positions.default, cache=cache, seed=s.seed,
                            predictor=pf.predictor if pf is not None else None,
                            pair_scales={sid: scale_of.get(sid, 1.0) for sid in self.infos} if scales else {},
                            pair_position_of={sid: p for sid, p in position_of.items() if sid in self.infos})
        self.live_p2s = self._live_p2s(snap, rids.get("pair_recipe"), positions)
        train = sorted(set(train_mem["sample_id"].to_pylist()))
        for name, recipe, spec in (("mean-s", cache_cfg.pair_recipe, c.vectors.mean_s),
                                   ("mean-s-ba", cache_cfg.ba_recipe, c.vectors.mean_s_ba)):
            if name not in methods:
                continue
            label = get_method(name).label
            if spec == "cache":
                if not recipe:
                    key = "pair_recipe" if name == "mean-s" else "ba_recipe"
                    raise ConfigError(f"method {label} reads its vector from the cache: set [cache] {key} to the "
                                      f"recipe of its pairs, or give a .safetensors file in [vectors].")
                rid = rids["pair_recipe" if name == "mean-s" else "ba_recipe"]
                v = mean_from_cache(snap, rid, positions.default, s.layer, train, what=label,
                                    scale_of=scale_of if name == "mean-s" else None,
                                    position_of=position_of if name == "mean-s" else None)
            else:
                v = load_vector(spec, what=label)
            setattr(src, "mean_s" if name == "mean-s" else "mean_s_ba", v)
        if {"p2s", "norm-rnd"} & set(methods) and not cache_cfg.pair_recipe and not c.data.behavior:
            raise ConfigError("methods P2S* and Norm-Rnd need each sample's P2S vector: set [cache] pair_recipe, "
                              "or [data] behavior to compute it from the pairs.")
        return src

    #: Samples whose P2S (P2S*, Norm-Rnd) the cache lacks, computed live from their pairs.
    live_p2s: int = 0

    def _pair_positions(self, pf: Any = None) -> Any:
        """Where each sample's P2S is read (:mod:`.pairs`): [cache], else the predictor's."""
        if pf is None and "l2s" in self._methods():
            pf = self._given["predictor"] or self.config.l2s.predictor or None
        trained, overrides = trained_pair_positions(pf)
        c = self.config.cache
        return resolve_pair_positions(c.pair_position, c.pair_position_overrides, trained, overrides)

    def _live_p2s(self, snap: Any, recipe: str | None, positions: Any) -> int:
        """How many evaluated samples need a live P2S (:mod:`.pairs`); refused under strict."""
        if not {"p2s", "norm-rnd"} & set(self._methods()):
            return 0
        return live_p2s_count(snap, recipe, self.config.steering.layer, positions,
                              {sid: info.category for sid, info in self.infos.items()}, strict=self.config.cache.strict)

    def _predictor(self) -> Any:
        given = self._given["predictor"]
        if given is not None:
            return given if isinstance(given, PredictorFile) else PredictorFile(given)
        if not self.config.l2s.predictor:
            raise ConfigError("method L2S needs a trained predictor: set [l2s] predictor to its file, or drop "
                              "l2s from [steering] methods.")
        return load_predictor(self.config.l2s.predictor, dim=self.adapter.hidden_size)

    @staticmethod
    def _agree(key: str, configured: Any, recorded: Any, what: str) -> Any:
        """The configured value, else the predictor file's; the two must agree when both are set."""
        if configured is not None and recorded is not None and configured != recorded:
            raise ConfigError(f"{key} = {configured!r}, but the L2S predictor was trained with {what} = "
                              f"{recorded!r}; set {key} to {recorded!r} (or leave it out), or use a predictor "
                              f"trained for {configured!r}.")
        return configured if configured is not None else recorded

    def _recipe_id(self, name: str) -> str | None:
        """The id of the recipe with this id or name, None if the store has none."""
        try:
            return self.store.recipe(name).id
        except KeyNotFoundError:
            return None

    def _check_recipe_model(self, key: str, name: str, rid: str) -> None:
        """A cache recipe must come from the evaluated model: the same weights and processor."""
        model = self.store.recipe(rid).spec.get("model")
        theirs = model.get("fingerprint") if isinstance(model, dict) else None
        if theirs is not None and theirs != self.adapter.fingerprint():
            raise ConfigError(
                f"[cache] {key} = {name!r} was extracted from a model with fingerprint {theirs[:12]}..., but the "
                f"evaluated model {self.config.model.path!r} has {self.adapter.fingerprint()[:12]}...: its "
                f"activations do not belong to this model. Name a recipe of this model, or evaluate that one."
            )

    def worker(self) -> EvalWorker:
        g = self.config.generation
        gen = SteeredGenerator(self.adapter, self.sources(), max_new_tokens=g.max_new_tokens,
                               do_sample=g.do_sample, seed=g.seed if g.do_sample else None,
                               max_new_tokens_unsteered=g.max_new_tokens_unsteered or None)
        guard, quality = load_judges(self.config.judges, guard=self._given["guard"], quality=self._given["quality"])
        return EvalWorker(run_id=self.run_id, task=self.config.data.task, generator=gen, store=self.store,
                          load_item=self.load_item, infos=self.infos, texts=load_texts(), batch_size=g.batch_size,
                          guard=guard, quality=quality)

    # -- plan and run ---------------------------------------------------------------------
    def check_run_id(self) -> None:
        """Refuse a run id that the store already holds for a config with other settings (a
        reused ``[run] name``): its committed rows would be skipped as if they were this run's."""
        rows = query(self.store, "SELECT DISTINCT config_json FROM runs WHERE run_id = ? AND kind = 'evaluate'",
                     [self.run_id])["config_json"].to_pylist()
        mine = config_identity(self.config.to_dict())
        for text in rows:
            theirs = config_identity(json.loads(text))
            if theirs != mine:
                diff = sorted(f"{s}.{k}" for s in set(mine) | set(theirs)
                              for k in set(mine.get(s, {})) | set(theirs.get(s, {}))
                              if mine.get(s, {}).get(k) != theirs.get(s, {}).get(k))
                raise ConfigError(
                    f"run id {self.run_id!r} already names an evaluation in store {self.store.url} whose config "
                    f"differs in {diff[:6]}; give [run] name another value (or leave it empty for a run id "
                    f"derived from the config). Only methods and alphas may change under one run id."
                )

    def plan(self) -> EvalPlan:
        """The units still to compute: per method, the samples missing at some alpha."""
        self.check_run_id()
        ids = sorted(self.infos)
        done = committed_rows(self.store, self.run_id)
        units, total, missing = [], 0, 0
        for m in self._methods():
            alphas = self.config.steering.alphas_for(m)
            total += len(alphas) * len(ids)
            # Group samples by the alphas they lack, so a unit runs each sample's vectors once.
            by_alphas: dict[tuple, list[str]] = {}
            for sid in ids:
                lack = tuple(a for a in alphas if (m, a, sid) not in done)
                if lack:
                    by_alphas.setdefault(lack, []).append(sid)
                    missing += len(lack)
            size = self.config.run.unit_size
            for lack, sids in by_alphas.items():
                units.extend(EvalUnit(m, lack, tuple(sids[i:i + size])) for i in range(0, len(sids), size))
        return EvalPlan(self.run_id, tuple(units), total, missing)

    def record(self) -> None:
        """Commit the run's config and its samples' tables (idempotent)."""
        samples, mem = self.selection
        self.store.put("samples", samples, memberships=mem)
        pair = self._recipe_id(self.config.cache.pair_recipe) if self.config.cache.pair_recipe else None
        self.live_p2s = self._live_p2s(self.store.snapshot(), pair, self._pair_positions())
        rids = []
        for r in (self.config.cache.input_recipe, self.config.cache.pair_recipe, self.config.cache.ba_recipe):
            if r:
                rids.append(self._recipe_id(r) or r)
        self.store.put("runs", [{
            "run_id": self.run_id, "kind": "evaluate", "recipe_ids": sorted(set(rids)),
            "snapshot_id": self.store.snapshot().id, "status": "started",
            "config_json": json.dumps(self.config.to_dict(), sort_keys=True),
            "metrics_json": json.dumps({"model": self.identity(), "live_p2s": self.live_p2s}, sort_keys=True),
            "artifact": None,
        }])

    def identity(self) -> dict[str, Any]:
        """The evaluated model's identity (:mod:`.identity`), with its weights' fingerprint when
        this process has loaded the model (a Ray driver does not load it)."""
        loaded = self._given["adapter"] is not None or "adapter" in self.__dict__
        return identity_from_path(self.config.model.path, fingerprint=self.adapter.fingerprint() if loaded else None)

    def run(self, *, on_plan: Callable[[EvalPlan], None] | None = None,
            on_done: Callable[[UnitOutcome], None] | None = None) -> EvalReport:
        """Compute every missing row in this process; ``on_done`` is called after each commit."""
        t0 = time.perf_counter()
        plan = self.plan()
        if on_plan is not None:
            on_plan(plan)
        if not plan.units:
            return EvalReport(self.run_id, self.store.url, plan, (), time.perf_counter() - t0)
        worker = self.worker()  # loads the model, vectors and judges: a bad path fails before any commit
        self.record()
        outcomes: list[UnitOutcome] = []
        for unit in plan.units:
            outcomes.extend(worker.run_unit(unit, on_done))
        return EvalReport(self.run_id, self.store.url, plan, tuple(outcomes), time.perf_counter() - t0,
                          self.notes())

    def notes(self) -> tuple[str, ...]:
        """What a user must hear about this run (a live P2S, so far)."""
        if not self.live_p2s:
            return ()
        where = self._pair_positions().describe()
        return (f"{self.live_p2s} sample(s) had no cached P2S at {where}: P2S* / Norm-Rnd computed it live "
                f"from their pairs (recorded in the run row; [cache] strict = true refuses this)",)
