"""Sweeps: many trainings over one cache, run as Ray Tune trials.

::

    base = "tiny-llava.toml"              # a training config (path relative to this file)
    name = "tiny-llava-sweep"

    [sweep]
    mode = "grid"                         # every combination; "random": num_samples draws
    num_samples = 1                       # grid: repeats of the grid; random: trials
    seed = 0                              # random draws
    scheduler = "none"                    # "asha": stop weak trials early on the metric
    metric = "val_cosine"                 # "val_cosine" (max) or "val_loss" / "val_mse" (min)
    max_concurrent = 2
    cpus_per_trial = 1
    threads_per_trial = 1                 # torch threads in a trial (fixed: reproducible sums)
    ray_address = ""                      # "" = a local Ray; "auto" or host:port to join one

    [sweep.params]                        # dotted keys of the training config -> values
    "trainer.lr" = [1e-3, 3e-3]
    "input.layer" = [1, 2]
    "seed" = [0, 1]
    "trainer.l1_weight" = { low = 0.0, high = 1.0 }          # random mode only
    "trainer.lr" = { low = 1e-4, high = 1e-2, log = true }   # random mode only

Trials are drawn here (the grid, or ``num_samples`` seeded random draws), then run by Tune as a
grid over the drawn list, so the same sweep config always runs the same trials. The rows each
trial reads are read from the store once, by the driver, for each distinct data selection
(keys, split, scaling) among the trials, and put in the Ray object store: trials on one node
share one copy. Every trial commits its own row to ``runs`` (kind ``sweep``, ``sweep_id``); a
trial the scheduler stops early is committed by the driver with status ``stopped`` and the
epochs it reported.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s_data.actors import absolute_path
from l2s_data.configfile import read_toml, validation_message
from l2s_data.errors import ConfigError, TrainingError
from l2s_data.steer.selection import query
from l2s_data.store import Store
from l2s_data.train.config import TrainConfig, parse_train_config
from l2s_data.train.data import load_data
from l2s_data.train.trainer import commit_run, train

__all__ = ["SweepSettings", "SweepConfig", "SweepResult", "load_sweep_config", "parse_sweep_config",
           "draw_trials", "run_sweep", "data_signature"]

_MINIMISE = {"val_loss", "val_mse"}


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float
    log: bool = False


class SweepSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["grid", "random"] = "grid"
    num_samples: int = Field(1, ge=1)
    seed: int = 0
    scheduler: Literal["none", "asha"] = "none"
    metric: Literal["val_cosine", "val_loss", "val_mse"] = "val_cosine"
    grace_epochs: int = Field(5, ge=1)   # ASHA: epochs before a trial may be stopped
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    threads_per_trial: int = Field(1, ge=1)
    ray_address: str = ""
    params: dict[str, list[Any] | Range] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _nonempty(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, vals in v.items():
            if isinstance(vals, list) and not vals:
                raise ValueError(f"params.{k} lists no value")
        return v


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "sweep"
    base: dict[str, Any]               # the training config (a table, or read from a path)
    sweep: SweepSettings = SweepSettings()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"sweep param {dotted!r}: {p!r} is not a table of the training config")
    d[parts[-1]] = value


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for k, v in overrides.items():
        _set(out, k, v)
    return out


def parse_sweep_config(data: dict[str, Any], *, source: str = "<dict>", base_dir: Path | None = None) -> SweepConfig:
    """Validate a sweep config; the base config and every trial's config are checked up front."""
    data = dict(data)
    base = data.get("base")
    if isinstance(base, str):
        path = Path(base) if Path(base).is_absolute() or base_dir is None else base_dir / base
        data["base"] = read_toml(path, "base training config", example="l2s_data/train/configs/*.toml")
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err, f"sweep config {source}")) from None
    parse_train_config(cfg.base, source=f"{source} (base)")
    for t in draw_trials(cfg):  # a bad param name fails here, naming the key, not in a trial
        parse_train_config(apply_overrides(cfg.base, t), source=f"{source} (trial {t})")
    return cfg


def load_sweep_config(path: str | Path) -> SweepConfig:
    p = Path(path)
    return parse_sweep_config(read_toml(p, "sweep config", example="l2s_data/train/configs/tiny-llava-sweep.toml"), source=repr(str(p)), base_dir=p.parent)


def draw_trials(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The trials' overrides, in order: the grid (repeated), or seeded random draws."""
    s = cfg.sweep
    names = sorted(s.params)
    if s.mode == "grid":
        ranges = [n for n in names if isinstance(s.params[n], Range)]
        if ranges:
            raise ConfigError(f"sweep params {ranges} are ranges; a grid needs lists of values (or mode = \"random\")")
        combos = [dict(zip(names, vals)) for vals in itertools.product(*(s.params[n] for n in names))]
        return combos * s.num_samples
    rng = np.random.default_rng(s.seed)
    out = []
    for _ in range(s.num_samples):
        t: dict[str, Any] = {}
        for n in names:
            p = s.params[n]
            if isinstance(p, Range):
                if p.log:
                    if p.low <= 0:
                        raise ConfigError(f"sweep param {n!r}: a log range needs low > 0, got {p.low}")
                    t[n] = float(np.exp(rng.uniform(np.log(p.low), np.log(p.high))))
                else:
                    t[n] = float(rng.uniform(p.low, p.high))
            else:
                t[n] = p[int(rng.integers(len(p)))]
        out.append(t)
    return out


def data_signature(cfg: TrainConfig) -> str:
    """What :func:`l2s_data.train.data.load_data` reads depends on these fields only."""
    sig = {"store": cfg.store, "input": cfg.input.model_dump(), "target": cfg.target.model_dump(),
           "split": cfg.split.model_dump(), "scaling": cfg.target_scaling.model_dump(),
           "balance": cfg.trainer.balance_labels, "in_memory": cfg.in_memory}
    return json.dumps(sig, sort_keys=True)


def _absolute(base: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Trials run in their own folders: make the store and out_dir paths absolute."""
    out = dict(base)
    for k in ("store", "out_dir"):
        v = out.get(k)
        if isinstance(v, str):
            out[k] = absolute_path(v, base_dir)
    return out


@dataclass
class SweepResult:
    sweep_id: str
    run_ids: list[str]
    snapshot_id: str
    best_run_id: str | None
    best_metric: float | None
    stopped: list[str]
    selections_read: int = 0        # distinct row selections read from the store (once each)


def _trainable(config: dict[str, Any], base: dict[str, Any], refs: dict[str, Any], sweep_id: str,
               threads: int, report_epochs: bool) -> None:
    _trial(config["trial"], base=base, refs=refs, sweep_id=sweep_id, threads=threads, report_epochs=report_epochs)


def _trial(config: dict[str, Any], *, base: dict[str, Any], refs: dict[str, Any], sweep_id: str,
           threads: int, report_epochs: bool) -> None:
    import ray  # Ray Tune: ~3.4 s of import (measured) that reading a sweep config does not need
    from ray import tune

    torch.set_num_threads(threads)
    cfg = parse_train_config(apply_overrides(base, config["overrides"]), source=f"sweep {sweep_id}")
    data = ray.get(refs[data_signature(cfg)])
    run_id = config["run_id"]

    last = cfg.trainer.epochs - 1

    def report(row: dict[str, Any]) -> None:
        if row["epoch"] < last:  # the last epoch is reported after the commit, below
            tune.report({**row, "run_id": run_id})

    # Each report waits for the driver to take it (10-20 ms here): only a scheduler that stops
    # trials early needs every epoch; otherwise the last one is enough.
    res = train(cfg, data=data, run_id=run_id, kind="sweep", sweep_id=sweep_id,
                on_epoch=report if report_epochs else None,
                extra_metrics={"sweep_params": config["overrides"]})
    # A scheduler may stop a trial at any report (ASHA does at its last iteration): this one
    # comes after the run is committed, so nothing is lost then. It carries the run's offline
    # metrics (those of the kept model: the best-validation epoch's where that one is kept), as
    # its `runs` row does, so that Tune ranks the trials as `runs` does.
    tune.report({**res.history[-1], "val_cosine": res.metrics["val_cosine"], "val_mse": res.metrics["val_mse"],
                 "run_id": run_id})


def run_sweep(cfg: SweepConfig, *, base_dir: str | Path = ".", sweep_id: str | None = None,
              ray_address: str | None = None, progress: bool = False) -> SweepResult:
    """Run every trial of ``cfg`` on Ray Tune and commit them to ``runs`` (see the module doc)."""
    import ray  # as in _trial: only where a sweep runs
    from ray import tune

    s = cfg.sweep
    base = _absolute(cfg.base, Path(base_dir))
    trials = draw_trials(cfg)
    if not trials:
        raise ConfigError("the sweep draws no trial; add [sweep.params]")
    sweep_id = sweep_id or (f"{cfg.name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-"
                            f"{uuid.uuid4().hex[:6]}")
    cfgs = [parse_train_config(apply_overrides(base, t), source=f"sweep trial {i}") for i, t in enumerate(trials)]
    stores = {c.store for c in cfgs}
    if len(stores) != 1:
        raise ConfigError(f"a sweep reads one store; its trials name {sorted(stores)}")
    store = Store.open(cfgs[0].store)
    address = ray_address if ray_address is not None else (s.ray_address or None)
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
        started = True
    try:
        datas: dict[str, Any] = {}
        snaps: set[str] = set()
        for c in cfgs:
            sig = data_signature(c)
            if sig not in datas:
                d = load_data(c, store)
                if d.train is None:
                    raise ConfigError("a sweep shares rows in memory between trials; its selections must "
                                      "fit memory_budget (or set in_memory = true)")
                snaps.add(d.snapshot_id)
                datas[sig] = ray.put(d)
        if len(snaps) != 1:
            raise TrainingError(f"the store changed while the sweep read it (snapshots {sorted(snaps)}); rerun.")
        run_ids = [f"{sweep_id}-t{i:03d}" for i in range(len(trials))]
        space = {"trial": tune.grid_search([{"overrides": t, "run_id": r} for t, r in zip(trials, run_ids)])}
        fn = tune.with_parameters(
            _trainable,
            base=base, refs=datas, sweep_id=sweep_id, threads=s.threads_per_trial,
            report_epochs=s.scheduler != "none")
        fn = tune.with_resources(fn, {"cpu": s.cpus_per_trial})
        mode = "min" if s.metric in _MINIMISE else "max"
        scheduler = None
        if s.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            epochs = max(c.trainer.epochs for c in cfgs)
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                      grace_period=min(s.grace_epochs, epochs))
        out_dir = Path(cfgs[0].out_dir)
        # reuse_actors: a trial's worker process (torch, Tune and this package imported: 3-5 s
        # here) runs the next trial too, instead of a fresh process per trial.
        tuner = tune.Tuner(
            fn, param_space=space,
            tune_config=tune.TuneConfig(metric=s.metric, mode=mode, scheduler=scheduler, reuse_actors=True,
                                        max_concurrent_trials=s.max_concurrent),
            run_config=tune.RunConfig(name=sweep_id, storage_path=str((out_dir / "tune").resolve()),
                                      verbose=1 if progress else 0),
        )
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            raise TrainingError(f"{len(errors)} of {len(trials)} sweep trial(s) failed; the first: {errors[0]}")
        # Trials stopped early never reached their own commit: commit what they reported.
        have = set(query(store, "SELECT run_id FROM runs WHERE sweep_id = ?", [sweep_id])["run_id"].to_pylist())
        stopped = []
        for r in grid:
            df = r.metrics_dataframe
            if df is None or not len(df):
                continue
            rid = str(df["run_id"].iloc[-1])
            if rid in have:
                continue
            i = run_ids.index(rid)
            hist = [{k: row[k] for k in ("epoch", "train_loss", "val_loss", "val_mse", "val_cosine", "lr")}
                    for row in df.to_dict("records")]
            commit_run(store, cfgs[i], rid, kind="sweep", sweep_id=sweep_id, snapshot_id=snaps.copy().pop(),
                       history=hist, metrics={"val_cosine": hist[-1]["val_cosine"], "val_mse": hist[-1]["val_mse"],
                                               "sweep_params": trials[i]},
                       status="stopped", artifact=None)
            stopped.append(rid)
    finally:
        if started:
            ray.shutdown()
    # runs has val_cosine and val_mse columns; a sweep on val_loss is ranked by val_mse
    ranked = {"val_cosine": "SELECT run_id, val_cosine AS m FROM runs WHERE sweep_id = ? AND status = 'completed' "
                            "ORDER BY m DESC LIMIT 1",
              "val_mse": "SELECT run_id, val_mse AS m FROM runs WHERE sweep_id = ? AND status = 'completed' "
                         "ORDER BY m ASC LIMIT 1"}
    best = query(store, ranked["val_cosine" if s.metric == "val_cosine" else "val_mse"], [sweep_id])
    return SweepResult(sweep_id, run_ids, snaps.pop(),
                       best["run_id"][0].as_py() if best.num_rows else None,
                       best["m"][0].as_py() if best.num_rows else None, stopped, len(datas))
