"""Where the evaluation's fixed vectors and the L2S predictor come from.

- :func:`mean_from_cache`: Mean-S (or Mean-S(BA)) as the mean of the cached P2S vectors of
  the training samples, at layer L* (float32 [D]), by the same mean as training's baselines
  (:func:`l2s_data.steer.baselines.mean_of`).
- :func:`load_vector`: one [D] vector from a ``.safetensors`` file (its only tensor, or the
  tensor named ``vector``).
- :func:`load_predictor`: a trained L2S predictor from the file training wrote, with the keys
  it was trained on (L', the input position and recipe; L*), through the training stage's
  loader (``l2s_data.steer.load_predictor``) and its checks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from l2s_data.errors import ConfigError, KeyNotFoundError
from l2s_data.evaluate.sources import VectorPredictor
from l2s_data.steer.baselines import mean_of
from l2s_data.steer.predictor import load_predictor as steer_load

__all__ = ["mean_from_cache", "load_vector", "ModulePredictor", "PredictorFile", "load_predictor"]


def mean_from_cache(snapshot: Any, recipe: str, position: str, layer: int, sample_ids: Sequence[str], *,
                    what: str = "Mean-S", scale_of: dict[str, float] | None = None,
                    position_of: dict[str, str] | None = None) -> torch.Tensor:
    """The mean P2S vector (float32 [D]) of those ``sample_ids`` that the cache holds, each row
    read at ``position_of[sample_id]`` when given (per-category positions, else ``position``)
    and multiplied by ``scale_of[sample_id]`` when given (the predictor's target scaling, so
    Mean-S is on the scale L2S was trained on)."""
    by: dict[str, list[str]] = {}
    for s in sample_ids:
        by.setdefault((position_of or {}).get(s, position), []).append(s)
    parts, ids = [], []
    for pos, group in by.items():
        try:
            idx = snapshot.index(recipe, "p2s", pos, layer)
        except KeyNotFoundError as err:
            raise ConfigError(f"{what}: {err}") from None
        have = [s for s in group if s in idx]
        if have:
            parts.append(np.asarray(snapshot.read(recipe, "p2s", pos, layer, have), np.float64))
            ids.extend(have)
    if not ids:
        raise ConfigError(
            f"{what}: the cache has no p2s vector of recipe {recipe!r} at {position}, layer {layer} for any of the "
            f"{len(sample_ids)} training sample(s); extract the training split with that recipe first, or give "
            f"the vector as a .safetensors file under [vectors]."
        )
    rows = np.concatenate(parts)
    if scale_of:
        rows = rows * np.array([scale_of.get(s, 1.0) for s in ids])[:, None]
    return torch.from_numpy(mean_of(rows))


def load_vector(path: str | os.PathLike, *, what: str = "vector") -> torch.Tensor:
    """One float32 [D] vector from a safetensors file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file {str(p)!r} does not exist; expected a .safetensors file with one [D] tensor.")
    tensors = load_file(str(p))
    if "vector" in tensors:
        t = tensors["vector"]
    elif len(tensors) == 1:
        (t,) = tensors.values()
    else:
        raise ConfigError(f"{what} file {str(p)!r} holds {sorted(tensors)}; expected one tensor, or one named 'vector'.")
    if t.ndim != 1:
        raise ConfigError(f"{what} file {str(p)!r}: the tensor has shape {tuple(t.shape)}; expected [D].")
    return t.float()


class ModulePredictor:
    """:class:`~.sources.VectorPredictor` around a torch module ``g`` (``g(h) -> v``), in float32, no grad."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()

    @torch.no_grad()
    def predict(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h.float())


@dataclass(frozen=True)
class PredictorFile:
    """A loaded predictor and the keys it was trained on: ``input_key`` (h_X: recipe, view,
    position, layer L') and ``target_key`` (v_X at layer L*); None where not known."""

    predictor: VectorPredictor
    input_key: dict[str, Any] | None = None
    target_key: dict[str, Any] | None = None
    #: category -> factor its training targets were multiplied by (empty: no target scaling)
    target_scales: dict[str, float] | None = None
    #: category -> the position its targets were read at, where not ``target_key["position"]``
    position_overrides: dict[str, str] | None = None


def load_predictor(path: str | os.PathLike, *, dim: int | None = None) -> PredictorFile:
    """A predictor file written by training (``l2s_data.steer.save_predictor``), checked by the
    training stage's loader; ``dim``: the model's hidden size, which must be its width."""
    g, meta = steer_load(path, d_in=dim, d_out=dim)
    overrides = meta.config.get("target", {}).get("position_overrides", {}) if isinstance(meta.config, dict) else {}
    return PredictorFile(ModulePredictor(g), dict(meta.input_key), dict(meta.target_key), dict(meta.target_scales),
                         dict(overrides or {}))
