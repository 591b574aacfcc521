"""Offline evaluation from the cache alone: how close g(h_X) is to v_X on held-out rows.

Metrics on the validation rows (targets after the run's target scaling):

- ``val_mse`` (mean squared error per dimension), ``val_cosine`` (mean cosine of prediction and
  P2S), ``norm_ratio`` (mean of ||g(h_X)|| / ||v_X||);
- the same cosine and MSE for Mean-S (the mean training target), Norm-Rnd and, when the config
  names a behaviour-agnostic recipe, Mean-S(BA); and the gain over Mean-S on the same rows
  (``gain_cosine = val_cosine - mean_s_cosine``, ``gain_mse = mean_s_mse - val_mse``);
- per category: rows, cosine, Mean-S cosine.

P2S* is the target itself (cosine 1, MSE 0), so it is not listed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from l2s_data.steer.baselines import mean_of, mean_s_ba, norm_rnd_of
from l2s_data.steer.predictor import Predictor
from l2s_data.store import Key
from l2s_data.train.config import TrainConfig
from l2s_data.train.data import TrainData

__all__ = ["cosines", "evaluate_offline", "predict", "vector_metrics"]


def cosines(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[N, D]`` arrays (0 where a row is zero), float64."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    den = np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1)
    return np.where(den > 0, (p * t).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)


def vector_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if p.shape != t.shape:
        p = np.broadcast_to(p, t.shape)
    tn = np.linalg.norm(t, axis=1)
    ratio = np.linalg.norm(p, axis=1) / np.where(tn > 0, tn, 1.0)
    return {"mse": float(((p - t) ** 2).mean()), "cosine": float(cosines(p, t).mean()),
            "norm_ratio": float(ratio.mean())}


def predict(model: Predictor, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def _scaled(y: np.ndarray, cats: np.ndarray, scales: dict[str, float]) -> np.ndarray:
    if not scales:
        return y
    return y * np.array([scales.get(c, 1.0) for c in cats], np.float32)[:, None]


def _train_mean(data: TrainData) -> np.ndarray:
    if data.train is not None:
        return mean_of(_scaled(data.train.columns[1], data.train.categories, data.scales))
    total, n = None, 0
    for _, yb, ids in data.stream_batches():
        y = yb.numpy().astype(np.float64)
        if data.scales:
            y = y * np.array([data.scales.get(data.stream_info.get(s, (None,))[0], 1.0) for s in ids])[:, None]
        total = y.sum(axis=0) if total is None else total + y.sum(axis=0)
        n += len(y)
    return (total / n).astype(np.float32)


def evaluate_offline(model: Predictor, data: TrainData, cfg: TrainConfig, *, store=None) -> dict[str, Any]:
    """The metrics of the module doc, as a JSON-able dict."""
    val = data.val
    target = _scaled(val.columns[1], val.categories, data.scales)
    pred = predict(model, val.columns[0])
    m = vector_metrics(pred, target)
    mean_s = _train_mean(data)
    ms = vector_metrics(mean_s[None, :], target)
    rnd = vector_metrics(norm_rnd_of(val.ids, target, cfg.baselines.norm_rnd_seed), target)
    out: dict[str, Any] = {
        "val_rows": len(val), "val_mse": m["mse"], "val_cosine": m["cosine"], "norm_ratio": m["norm_ratio"],
        "mean_s_mse": ms["mse"], "mean_s_cosine": ms["cosine"],
        "norm_rnd_mse": rnd["mse"], "norm_rnd_cosine": rnd["cosine"],
        "gain_cosine": m["cosine"] - ms["cosine"], "gain_mse": ms["mse"] - m["mse"],
    }
    if cfg.baselines.agnostic_recipe and store is not None:
        ba_key = Key(cfg.baselines.agnostic_recipe, "p2s", cfg.target.position, cfg.target.layer)
        ba = vector_metrics(mean_s_ba(store, ba_key, cfg.split.train_where)[None, :], target)
        out["mean_s_ba_mse"], out["mean_s_ba_cosine"] = ba["mse"], ba["cosine"]
    cos_pred, cos_ms = cosines(pred, target), cosines(np.broadcast_to(mean_s, target.shape), target)
    per: dict[str, dict[str, float]] = {}
    for c in sorted({str(c) for c in val.categories}):
        mask = np.array([str(v) == c for v in val.categories])
        per[c] = {"rows": int(mask.sum()), "cosine": float(cos_pred[mask].mean()),
                  "mean_s_cosine": float(cos_ms[mask].mean())}
    out["per_category"] = per
    return out
