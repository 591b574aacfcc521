"""The values a shard passes through on its way from the plan to the store.

:class:`ExtractJob` (what a worker is built from, picklable), :class:`Continuation` (how pair
completions are continued by generation), :class:`Batch` (a prepared batch of :class:`Row`),
:class:`ShardAccumulator` (a shard's computed batches) and :class:`ShardResult` (a computed
shard, in memory), then :class:`ShardOutcome` (what committing it did). The worker
(:mod:`l2s_data.extract.worker`) moves a shard from one to the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

from l2s_data.errors import DataSourceError, InputError
from l2s_data.extract.config import ExtractConfig
from l2s_data.extract.plan import SampleItem, Shard
from l2s_data.extract.recipe import RecipeRef
from l2s_data.models.encoding import EncodedItems

__all__ = ["QUARANTINED", "Key", "Kind", "Continuation", "ExtractJob", "Row", "Batch", "ShardResult", "ShardOutcome",
           "ShardAccumulator", "row_order"]

#: Errors that belong to one sample: quarantined, never fatal for the shard.
QUARANTINED = (InputError, DataSourceError)

Key = tuple[str, str, int]  # (view, position, layer)
Kind = Literal["input", "pair"]


@dataclass(frozen=True)
class Continuation:
    """How pos/neg completions are continued by generation before they are read."""

    max_new_tokens: int = 0
    do_sample: bool = False
    seed: int = 0
    include_last_generated: bool = False

    @classmethod
    def of(cls, settings: Mapping[str, object]) -> "Continuation":
        return cls(int(settings.get("max_new_tokens", 0)), bool(settings.get("do_sample", False)),
                   int(settings.get("seed", 0)), bool(settings.get("include_last_generated", False)))


@dataclass(frozen=True)
class ExtractJob:
    """Everything a worker needs, picklable (a Ray actor is built from this alone)."""

    config: ExtractConfig
    recipes: Mapping[str, RecipeRef]

    @property
    def continuation(self) -> Continuation:
        pair = self.recipes.get("pair")
        return Continuation.of(dict(pair.recipe.completion)) if pair else Continuation()


@dataclass(frozen=True)
class Row:
    """A sample of a batch, with its image loaded."""

    item: SampleItem
    image: Image.Image


@dataclass(frozen=True)
class Batch:
    """A prepared batch: rows that passed the checks, their encodings, and the error rows of
    the ones that did not. ``kind``: ``pair`` (pos/neg, and input when ``with_input``) or
    ``input`` (input alone). ``encoded`` is None for input-only batches and for pair batches
    that are continued by generation (their sequences exist only after it)."""

    shard: Shard
    kind: Kind
    with_input: bool
    rows: tuple[Row, ...]
    encoded: EncodedItems | None
    errors: tuple[dict[str, object], ...]
    first_row: int      # the index of the batch's first planned sample in the shard's row order
    last: bool          # the shard's last batch
    seconds: float      # time spent preparing it


@dataclass
class ShardResult:
    """A computed shard, in memory: per recipe kind, the sample ids and their float32 rows.

    ``arrays[kind][(view, position, layer)]`` is a float32 CPU tensor ``[len(sample_ids[kind]), D]``
    with row i = ``sample_ids[kind][i]``; p2s was taken in float32 before any down-cast.
    """

    shard: Shard
    sample_ids: dict[str, list[str]] = field(default_factory=dict)
    arrays: dict[str, dict[Key, torch.Tensor]] = field(default_factory=dict)
    errors: list[dict[str, object]] = field(default_factory=list)
    compute_s: float = 0.0

    @property
    def samples(self) -> int:
        return len({s for ids in self.sample_ids.values() for s in ids})

    @property
    def quarantined(self) -> int:
        return len({e["sample_id"] for e in self.errors})


@dataclass(frozen=True)
class ShardOutcome:
    """What committing a shard did. ``won[kind]`` False = another attempt committed it first."""

    shard_id: str
    samples: int
    keys: int
    quarantined: int
    won: Mapping[str, bool]
    compute_s: float
    write_s: float


def row_order(item: SampleItem) -> tuple[int, str]:
    # Batch similar lengths together (less padding); deterministic, from the plan alone.
    extra = len(item.pair[0]) + max(len(item.pair[1]), len(item.pair[2])) if item.pair else 0
    return (len(item.query) + extra, item.sample_id)


class ShardAccumulator:
    """A shard's computed batches, gathered per recipe kind until the shard is complete."""

    def __init__(self, shard: Shard):
        self.result = ShardResult(shard)
        self.chunks: dict[str, list[tuple[list[str], dict[Key, torch.Tensor]]]] = {"input": [], "pair": []}

    def add(self, kind: str, ids: list[str], arrays: dict[Key, torch.Tensor]) -> None:
        if ids:
            self.chunks[kind].append((ids, arrays))

    def finish(self, recipes: Mapping[str, RecipeRef]) -> ShardResult:
        res = self.result
        for kind, chunks in self.chunks.items():
            if chunks:
                res.sample_ids[kind] = [s for ids, _ in chunks for s in ids]
                res.arrays[kind] = {k: torch.cat([c[k] for _, c in chunks]).float() for k in recipes[kind].recipe.keys()}
        return res
