"""Where the evaluation's fixed vectors and the L2S predictor come from.

- :func:`mean_from_cache`: Mean-S (or Mean-S(BA)) as the mean of the cached P2S vectors of
  the training samples, at layer L* (float32 [D]).
- :func:`load_vector`: one [D] vector from a ``.safetensors`` file (its only tensor, or the
  tensor named ``vector``).
- :func:`load_predictor`: a trained L2S predictor from its file. The training stage's own
  loader is used when it is installed (``l2s_data.steer.load_predictor``); otherwise a
  safetensors file of the predictor's two layers, Linear(D, H) -> Tanh -> Linear(H, D, no
  bias), is read here (:class:`MLPPredictor`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2s_data.errors import ConfigError, KeyNotFoundError
from l2s_data.evaluate.methods import Predictor

__all__ = ["mean_from_cache", "load_vector", "MLPPredictor", "load_predictor"]


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


_LAYOUTS = (("0.weight", "0.bias", "2.weight"), ("net.0.weight", "net.0.bias", "net.2.weight"),
            ("encoder.weight", "encoder.bias", "decoder.weight"))


def load_predictor(path: str | os.PathLike) -> Predictor:
    """A trained L2S predictor: ``predict(h [B, D]) -> v [B, D]``."""
    try:  # the training stage's own format, with its checks, when it is installed
        from l2s_data.steer import load_predictor as steer_load  # type: ignore[attr-defined]
    except ImportError:
        steer_load = None
    if steer_load is not None:
        return steer_load(path)
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"predictor file {str(p)!r} does not exist; give the file a training run saved "
                          f"(see `l2s sql \"SELECT run_id, artifact FROM runs\"`).")
    tensors = load_file(str(p))
    for keys in _LAYOUTS:
        if all(k in tensors for k in keys):
            return MLPPredictor(*(tensors[k].float() for k in keys)).eval()
    raise ConfigError(f"predictor file {str(p)!r} holds tensors {sorted(tensors)[:8]}; expected the two layers of "
                      f"Linear(D, H) -> Tanh -> Linear(H, D) under one of {[list(k) for k in _LAYOUTS]}.")
