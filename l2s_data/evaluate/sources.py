"""Where steered generation draws its vectors from: the predictor, the cache and fixed vectors.

- :class:`VectorPredictor`: what L2S needs of a trained predictor (``predict(h) -> v``).
- :class:`ActivationCache`: the rows a store snapshot already holds, by sample id.
- :class:`VectorSources`: everything the steering methods of :mod:`.methods` draw on, which
  :class:`~.generation.SteeredGenerator` turns into one vector per sample.

Shapes: B items of a batch, D the model's hidden size; every vector is float32 ``[B, D]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from l2s_data.errors import KeyNotFoundError

__all__ = ["VectorPredictor", "ActivationCache", "VectorSources"]


@runtime_checkable
class VectorPredictor(Protocol):
    """What L2S needs of a trained predictor: ``predict(h [B, D]) -> v [B, D]`` (float32)."""

    def predict(self, h: torch.Tensor) -> torch.Tensor: ...


class ActivationCache:
    """Cached rows of a store snapshot: the ``input`` view of ``input_recipe`` and the ``p2s``
    view of ``pair_recipe`` (recipe ids or names; either may be None)."""

    def __init__(self, snapshot: Any, *, input_recipe: str | None = None, pair_recipe: str | None = None):
        self.snapshot = snapshot
        self.recipes = {"input": input_recipe, "p2s": pair_recipe}

    def lookup(self, view: str, position: str, layer: int,
               sample_ids: Sequence[str]) -> tuple[torch.Tensor | None, list[bool]]:
        """``(rows [n_found, D] float32, found mask)`` for ``sample_ids``: rows in order of the
        samples whose mask is True. ``(None, all False)`` when nothing is cached."""
        recipe = self.recipes.get(view)
        if recipe is None:
            return None, [False] * len(sample_ids)
        try:
            idx = self.snapshot.index(recipe, view, position, layer)
        except KeyNotFoundError:
            return None, [False] * len(sample_ids)
        found = [s in idx for s in sample_ids]
        ids = [s for s, f in zip(sample_ids, found) if f]
        if not ids:
            return None, found
        return torch.from_numpy(self.snapshot.read(recipe, view, position, layer, ids)), found


@dataclass
class VectorSources:
    """Everything the steering methods draw their vectors from (see the module docstring)."""

    steer_layer: int
    input_layer: int | None = None
    input_position: str = "prompt_last"
    pair_position: str = "completion_last"
    predictor: VectorPredictor | None = None
    mean_s: torch.Tensor | None = None
    mean_s_ba: torch.Tensor | None = None
    cache: ActivationCache | None = None
    seed: int = 0
    #: sample id -> the factor its P2S is multiplied by (the predictor's target scaling of its
    #: category), so P2S* and Norm-Rnd are on the scale L2S and Mean-S are; empty: unscaled.
    pair_scales: dict[str, float] = field(default_factory=dict)
    #: sample id -> the position its P2S is read at, where not ``pair_position`` (per-category
    #: positions: the reference's Qwen2-VL safety reads 10-13 at sequence_last-1)
    pair_position_of: dict[str, str] = field(default_factory=dict)
    #: Where each h_X / P2S row of the last :meth:`SteeredGenerator.vectors` call came from
    #: ("cache" or "prefill"), by sample id: what a caller can log or test.
    provenance: dict[str, str] = field(default_factory=dict)
