"""Where the evaluation's fixed vectors and the L2S predictor come from.

- :func:`mean_from_cache`: Mean-S (or Mean-S(BA)) as the mean of the cached P2S vectors of
  the training samples, at layer L* (float32 [D]).
- :func:`load_vector`: one [D] vector from a ``.safetensors`` file (its only tensor, or the
  tensor named ``vector``).
- :func:`load_predictor`: a trained L2S predictor from its file, with the keys it was trained
  on (L', the input position and recipe; L*) when the file records them. The training stage's
  own loader is used when it is installed (``l2s_data.steer.load_predictor``); otherwise a
  safetensors file of the predictor's two layers, Linear(D, H) -> Tanh -> Linear(H, D, no
  bias), is read here (:class:`MLPPredictor`), with the metadata entry ``l2s.predictor``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2s_data.errors import ConfigError, KeyNotFoundError
from l2s_data.evaluate.methods import Predictor

__all__ = ["mean_from_cache", "load_vector", "MLPPredictor", "ModulePredictor", "PredictorFile", "load_predictor"]


def mean_from_cache(snapshot: Any, recipe: str, position: str, layer: int, sample_ids: Sequence[str], *,
                    what: str = "Mean-S") -> torch.Tensor:
    """The mean P2S vector (float32 [D]) of those ``sample_ids`` that the cache holds."""
    try:
        idx = snapshot.index(recipe, "p2s", position, layer)
    except KeyNotFoundError as err:
        raise ConfigError(f"{what}: {err}") from None
    ids = [s for s in sample_ids if s in idx]
    if not ids:
        raise ConfigError(
            f"{what}: the cache has no p2s vector of recipe {recipe!r} at {position}, layer {layer} for any of the "
            f"{len(sample_ids)} training sample(s); extract the training split with that recipe first, or give "
            f"the vector as a .safetensors file under [vectors]."
        )
    rows = snapshot.read(recipe, "p2s", position, layer, ids)
    return torch.from_numpy(np.asarray(rows, np.float64).mean(0).astype(np.float32))


def load_vector(path: str | os.PathLike, *, what: str = "vector") -> torch.Tensor:
    """One float32 [D] vector from a safetensors file."""
    from safetensors.torch import load_file

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


class MLPPredictor(torch.nn.Module):
    """g(h) = W2 tanh(W1 h + b1): the L2S predictor's architecture (DESIGN.md section 1)."""

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor):
        super().__init__()
        hidden, dim = w1.shape
        if tuple(b1.shape) != (hidden,) or tuple(w2.shape) != (dim, hidden):
            raise ConfigError(f"predictor weights do not fit Linear({dim}, {hidden}) -> Tanh -> Linear({hidden}, "
                              f"{dim}): got {tuple(w1.shape)}, {tuple(b1.shape)}, {tuple(w2.shape)}.")
        self.encoder = torch.nn.Linear(dim, hidden)
        self.decoder = torch.nn.Linear(hidden, dim, bias=False)
        with torch.no_grad():
            self.encoder.weight.copy_(w1)
            self.encoder.bias.copy_(b1)
            self.decoder.weight.copy_(w2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.tanh(self.encoder(h)))

    @torch.no_grad()
    def predict(self, h: torch.Tensor) -> torch.Tensor:
        return self(h.float())


_LAYOUTS = (("encoder.weight", "encoder.bias", "decoder.weight"), ("0.weight", "0.bias", "2.weight"),
            ("net.0.weight", "net.0.bias", "net.2.weight"))
_META_KEY = "l2s.predictor"  # the training stage's metadata entry: a JSON object


class ModulePredictor:
    """:class:`Predictor` around a torch module ``g`` (``g(h) -> v``), in float32, no grad."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()

    @torch.no_grad()
    def predict(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h.float())


@dataclass(frozen=True)
class PredictorFile:
    """A loaded predictor and, when its file records them, the keys it was trained on:
    ``input_key`` (h_X: recipe, view, position, layer L') and ``target_key`` (v_X at L*)."""

    predictor: Predictor
    input_key: dict[str, Any] | None = None
    target_key: dict[str, Any] | None = None


def load_predictor(path: str | os.PathLike, *, dim: int | None = None) -> PredictorFile:
    """A trained L2S predictor file; ``dim``: the model's hidden size, checked when given."""
    try:  # the training stage's own loader, with its checks, when it is installed
        from l2s_data.steer import load_predictor as steer_load  # type: ignore[attr-defined]
    except ImportError:
        steer_load = None
    if steer_load is not None:
        g, meta = steer_load(path, d_in=dim, d_out=dim)
        return PredictorFile(ModulePredictor(g), dict(meta.input_key), dict(meta.target_key))
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"predictor file {str(p)!r} does not exist; give the file a training run saved "
                          f"(see `l2s sql \"SELECT run_id, artifact FROM runs\"`).")
    with safe_open(str(p), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for keys in _LAYOUTS:
        if all(k in tensors for k in keys):
            g = MLPPredictor(*(tensors[k].float() for k in keys)).eval()
            break
    else:
        raise ConfigError(f"predictor file {str(p)!r} holds tensors {sorted(tensors)[:8]}; expected the two layers "
                          f"of Linear(D, H) -> Tanh -> Linear(H, D) under one of {[list(k) for k in _LAYOUTS]}.")
    d_in, d_out = g.encoder.in_features, g.decoder.out_features
    if dim is not None and (d_in, d_out) != (dim, dim):
        raise ConfigError(f"predictor file {str(p)!r} maps {d_in} -> {d_out} dims, but the model's hidden size is "
                          f"{dim}: it was trained on another model.")
    meta = json.loads(header[_META_KEY]) if _META_KEY in header else {}
    return PredictorFile(g, meta.get("input_key"), meta.get("target_key"))
