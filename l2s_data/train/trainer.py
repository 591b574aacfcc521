"""Training the L2S predictor from the cache: no base model, only stored activations.

::

    result = train(load_train_config("l2s_data/train/configs/tiny-llava.toml"))
    result.run_id, result.artifact, result.metrics["val_cosine"]

One training: read the rows (:mod:`l2s_data.train.data`), build ``Predictor(D', D*, H)`` under a
seeded RNG, optionally initialise its decoder from the training targets (truncated SVD or a
small dictionary learning, unit-norm columns as the reference's), run Adam with an optional
warm-up + cosine schedule on ``mse_weight * MSE + l1_weight * L1 - w_e * cos`` (``w_e`` ramps
over ``cos_ramp_epochs``; with ``balance_labels`` each batch's loss is the mean of its per-label
means), validate every epoch by a fixed criterion (:func:`criterion`: the same weights at every
epoch, every row alike), keep the last or the best-validation weights, evaluate offline against the
baselines, save ``predictor.safetensors`` + ``config.json`` + ``metrics.json`` under
``<out_dir>/<run_id>/`` and commit one row to the store's ``runs`` table.

Same config + same snapshot + same thread count = bit-identical weights: the initial weights,
the batch order and every random draw come from ``seed``.
"""

from __future__ import annotations

import copy
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from l2s_data.behaviors import TrainerSettings
from l2s_data.errors import TrainingError
from l2s_data.steer.predictor import Predictor, PredictorMeta, save_predictor
from l2s_data.store import Store
from l2s_data.train.config import TrainConfig
from l2s_data.train.data import TrainData, load_data
from l2s_data.train.evaluate import evaluate_offline

__all__ = ["TrainResult", "train", "fit", "commit_run", "loss_terms", "criterion", "batch_weights", "lr_factor",
           "init_decoder", "new_run_id"]

#: Called after every epoch with the epoch's row of the history.
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    run_id: str
    model: Predictor
    meta: PredictorMeta
    history: list[dict[str, Any]]
    metrics: dict[str, Any]          # offline evaluation of the kept weights (l2s_data.train.evaluate)
    artifact: Path | None
    seconds: float


def new_run_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"


def loss_terms(pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor, s: TrainerSettings,
               epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted batch loss and its parts (mse, l1, cos, cos weight) as floats."""
    diff = pred - y
    mse = diff.pow(2).mean(dim=1)
    l1 = diff.abs().mean(dim=1)
    cos = F.cosine_similarity(pred, y, dim=1, eps=1e-8)
    cw = s.cos_weight * (min(1.0, epoch / s.cos_ramp_epochs) if s.cos_ramp_epochs else 1.0)
    per = s.mse_weight * mse + s.l1_weight * l1 - cw * cos
    wsum = w.sum()
    loss = (per * w).sum() / wsum
    with torch.no_grad():
        parts = {"mse": float((mse * w).sum() / wsum), "cos": float((cos * w).sum() / wsum)}
    return loss, parts


def criterion(pred: torch.Tensor, y: torch.Tensor, s: TrainerSettings) -> float:
    """The best-epoch criterion: mse_weight * MSE + l1_weight * L1 - criterion_cos_weight * cos,
    averaged over every row alike. It has no epoch: equal predictions score equally at any epoch
    (the training loss's ramped cosine weight would favour late epochs)."""
    diff = pred - y
    per = (s.mse_weight * diff.pow(2).mean(dim=1) + s.l1_weight * diff.abs().mean(dim=1)
           - s.criterion_cos_weight * F.cosine_similarity(pred, y, dim=1, eps=1e-8))
    return float(per.mean())


def batch_weights(codes: torch.Tensor) -> torch.Tensor:
    """Per-row weights (summing to 1) that make a batch's loss the mean of its per-label mean
    losses: every label present counts equally in the step, whatever its share of the batch."""
    _, inverse, counts = torch.unique(codes, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse].to(torch.float32))


def lr_factor(step: int, steps_per_epoch: int, s: TrainerSettings) -> float:
    """Multiplier of ``lr`` at an optimizer step: linear warm-up, then constant or cosine to 0."""
    warm = s.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if s.schedule == "constant":
        return 1.0
    total = max(1, s.epochs * steps_per_epoch - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / total)))


def init_decoder(model: Predictor, targets: np.ndarray, method: str, seed: int) -> None:
    """Set the decoder's columns to directions of the training targets.

    ``truncated_svd``: the top right-singular vectors of the centred targets (TruncatedSVD's
    components). ``dictionary_learning``: ``hidden`` atoms fitted by a few rounds of
    non-negative sparse coding (soft-thresholded least squares, codes clipped at 0, as
    ``DictionaryLearning(positive_code=True)``) and least-squares atom updates, starting from
    random training targets. Either way every column has unit norm, as the reference's.
    """
    if method == "default":
        return
    y = np.asarray(targets, np.float64)
    h = model.hidden
    if method == "truncated_svd":
        yc = y - y.mean(axis=0)
        _, s, vt = np.linalg.svd(yc, full_matrices=False)
        k = min(h, len(s))
        cols = vt[:k].T                                                 # [D, k], unit columns
    elif method == "dictionary_learning":
        rng = np.random.default_rng(seed)
        atoms = y[rng.choice(len(y), size=h, replace=len(y) < h)] + 1e-3 * rng.standard_normal((h, y.shape[1]))
        atoms /= np.linalg.norm(atoms, axis=1, keepdims=True) + 1e-12
        for _ in range(10):
            codes = y @ atoms.T @ np.linalg.pinv(atoms @ atoms.T)         # [N, h]
            lam = 0.1 * np.abs(codes).mean()
            codes = np.maximum(codes - lam, 0.0)                            # positive codes
            atoms = np.linalg.pinv(codes) @ y                               # [h, D]
            norms = np.linalg.norm(atoms, axis=1, keepdims=True)
            dead = norms[:, 0] < 1e-12
            atoms[dead] = y[rng.choice(len(y), size=int(dead.sum()))]
            atoms /= np.linalg.norm(atoms, axis=1, keepdims=True) + 1e-12
        cols, k = atoms.T, h
    else:
        raise TrainingError(f"decoder_init = {method!r}: expected default, truncated_svd or dictionary_learning.")
    with torch.no_grad():
        model.decoder.weight[:, :k] = torch.from_numpy(cols).to(torch.float32)


def _scaled(y: np.ndarray, cats: np.ndarray, scales: dict[str, float]) -> np.ndarray:
    if not scales:
        return y
    f = np.array([scales.get(c, 1.0) for c in cats], np.float32)
    return y * f[:, None]


def _codes(labels) -> torch.Tensor:
    names = {str(x) for x in labels}
    index = {n: i for i, n in enumerate(sorted(names))}
    return torch.tensor([index[str(x)] for x in labels], dtype=torch.int64)


def _memory_batches(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, bs: int,
                    gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
    perm = torch.randperm(len(x), generator=gen)
    for s in range(0, len(x), bs):
        i = perm[s : s + bs]
        yield x[i], y[i], w[i]


def _stream_batches(data: TrainData, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
    for xb, yb, ids in data.stream_batches(epoch):
        info = [data.stream_info.get(s, (None, None)) for s in ids]
        if data.scales:
            f = torch.tensor([data.scales.get(c, 1.0) for c, _ in info], dtype=torch.float32)
            yb = yb * f[:, None]
        yield xb, yb, _codes([lab for _, lab in info])


def fit(cfg: TrainConfig, data: TrainData, *, on_epoch: EpochCallback | None = None) -> tuple[Predictor, list[dict]]:
    """Train a predictor on ``data`` per ``cfg.trainer``; returns (kept model, per-epoch history)."""
    s = cfg.trainer
    val = data.val
    vx = torch.from_numpy(val.columns[0])
    vy = torch.from_numpy(_scaled(val.columns[1], val.categories, data.scales))
    d_in, d_out = vx.shape[1], vy.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Predictor(d_in, d_out, s.hidden_size)
    if data.train is not None:
        tx = torch.from_numpy(data.train.columns[0])
        ty_np = _scaled(data.train.columns[1], data.train.categories, data.scales)
        ty = torch.from_numpy(ty_np)
        tw = _codes(data.train.labels)
        steps = math.ceil(len(tx) / s.batch_size)
        init_targets = ty_np
    else:
        steps = math.ceil(data.num_train / s.batch_size)
        init_targets = None
    if s.decoder_init != "default":
        if init_targets is None:  # streamed: the decoder init needs the targets once
            parts = [yb for _, yb, _ in _stream_batches(data, 0)]
            init_targets = torch.cat(parts).numpy()
        init_decoder(model, init_targets, s.decoder_init, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps, s))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(s.epochs):
        model.train()
        total, n = 0.0, 0
        batches = (_memory_batches(tx, ty, tw, s.batch_size, gen) if data.train is not None
                   else _stream_batches(data, epoch))
        for xb, yb, cb in batches:
            wb = batch_weights(cb) if s.balance_labels else torch.ones(len(xb))
            loss, _ = loss_terms(model(xb), yb, wb, s, epoch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {float(loss)} at epoch {epoch} (lr={s.lr}); lower trainer.lr "
                    f"or check the stored targets for inf/NaN (`l2s store verify`)."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(xb)
            n += len(xb)
        model.eval()
        with torch.no_grad():
            pv = model(vx)
            vloss = criterion(pv, vy, s)  # fixed: the same weights at every epoch, every row alike
            # val_mse and val_cosine as the offline evaluation defines them (every row alike)
            vmse = float((pv - vy).pow(2).mean())
            vcos = float(F.cosine_similarity(pv, vy, dim=1, eps=1e-8).mean())
        row = {"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": float(vloss),
               "val_mse": vmse, "val_cosine": vcos, "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        if s.select == "best_validation" and (best is None or row["val_loss"] < best[0]):
            best = (row["val_loss"], copy.deepcopy(model.state_dict()), epoch)
        if on_epoch is not None:
            on_epoch(row)
    if best is not None:
        model.load_state_dict(best[1])
    for row in history:
        row["kept"] = (row["epoch"] == best[2]) if best is not None else (row["epoch"] == s.epochs - 1)
    model.eval()
    return model, history


def train(cfg: TrainConfig, *, store=None, data: TrainData | None = None, run_id: str | None = None,
          kind: str = "train", sweep_id: str | None = None, save: bool = True,
          on_epoch: EpochCallback | None = None, extra_metrics: dict[str, Any] | None = None) -> TrainResult:
    """Train, evaluate, save and commit one run (see the module doc).

    ``data`` skips reading the store (a sweep passes rows it read once); ``save=False`` writes
    no file and commits no row (benchmarks).
    """
    t0 = time.perf_counter()
    store = store if store is not None else Store.open(cfg.store)
    data = data if data is not None else load_data(cfg, store)
    run_id = run_id or new_run_id(cfg.name)
    model, history = fit(cfg, data, on_epoch=on_epoch)
    in_id, out_id = (store.recipe(r).id for r in (cfg.input.recipe, cfg.target.recipe))
    meta = PredictorMeta(
        input_key={**cfg.input.model_dump(), "recipe": in_id},
        target_key={**cfg.target.model_dump(), "recipe": out_id},
        d_in=model.d_in, d_out=model.d_out, hidden=model.hidden, snapshot_id=data.snapshot_id,
        run_id=run_id, config=cfg.to_dict(), target_scales=dict(data.scales),
    )
    metrics = {**evaluate_offline(model, data, cfg, store=store), **(extra_metrics or {}),
               "kept_epoch": next((h["epoch"] for h in history if h.get("kept")), None),
               "validation_overlaps_test": data.val_overlaps_test}
    seconds = time.perf_counter() - t0
    artifact = None
    if save:
        run_dir = Path(cfg.out_dir) / run_id
        artifact = save_predictor(run_dir / "predictor.safetensors", model, meta).resolve()
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
        (run_dir / "metrics.json").write_text(json.dumps({"final": metrics, "history": history}, indent=1))
        commit_run(store, cfg, run_id, kind=kind, sweep_id=sweep_id, snapshot_id=data.snapshot_id,
                   history=history, metrics=metrics, status="completed", artifact=str(artifact),
                   seconds=seconds, recipe_ids=sorted({in_id, out_id}))
    return TrainResult(run_id, model, meta, history, metrics, artifact, seconds)


def commit_run(store, cfg: TrainConfig, run_id: str, *, kind: str, sweep_id: str | None, snapshot_id: str,
               history: list[dict[str, Any]], metrics: dict[str, Any], status: str, artifact: str | None,
               seconds: float | None = None, recipe_ids: list[str] | None = None) -> None:
    """Commit one row to the store's ``runs`` table (metrics per epoch in ``metrics_json``)."""
    if recipe_ids is None:
        recipe_ids = sorted({store.recipe(r).id for r in (cfg.input.recipe, cfg.target.recipe)})
    store.put("runs", [{
        "run_id": run_id, "kind": kind, "recipe_ids": recipe_ids, "snapshot_id": snapshot_id,
        "status": status, "config_json": json.dumps(cfg.to_dict(), sort_keys=True),
        "metrics_json": json.dumps({"final": metrics, "history": history, "seconds": seconds}),
        "artifact": artifact, "sweep_id": sweep_id,
        "val_cosine": metrics.get("val_cosine"), "val_mse": metrics.get("val_mse"),
    }])
