"""The plan: (samples x recipes) keys minus what the store has committed, cut into shards.

A store shard holds one recipe's keys for a set of samples and is committed as a whole, so a
sample is either complete for a recipe or missing. The planner therefore works per sample:

1. for each recipe, the samples whose keys are not all committed (and not quarantined before);
2. those samples, sorted by sample id, cut into chunks of ``shard_size``;
3. each chunk is one unit of work (:class:`Shard`) with one part per recipe that it misses.

Ids are deterministic: a part's id is a hash of its recipe id and its sample ids; a shard's id
a hash of its parts' ids. The same plan inputs always give the same ids, so two workers that
race on a shard race on the same manifest, and the store's create-if-absent commit picks one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from l2s_data.errors import ConfigError

from l2s_data.extract.recipe import RecipeRef

__all__ = ["SampleItem", "ShardPart", "Shard", "Plan", "make_plan", "part_id", "complete_samples"]


@dataclass(frozen=True)
class SampleItem:
    """What a worker needs to build one sample's model inputs (the image is loaded by id).

    ``pair`` is ``(suffix, positive, negative)``; ``None`` when the sample has no pair recipe.
    """

    sample_id: str
    query: str
    pair: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class ShardPart:
    """One store shard: one recipe's keys for ``sample_ids`` (committed as a whole)."""

    kind: str
    recipe_id: str
    shard_id: str
    sample_ids: tuple[str, ...]


@dataclass(frozen=True)
class Shard:
    """One unit of work: a chunk of samples and, per recipe it misses, a :class:`ShardPart`.

    A worker computes all parts of a shard from the same forwards (prefix sharing), so the
    input view of a sample costs one short continuation when its pair views are computed too.
    """

    shard_id: str
    items: tuple[SampleItem, ...]
    parts: tuple[ShardPart, ...]

    @property
    def sample_ids(self) -> tuple[str, ...]:
        return tuple(i.sample_id for i in self.items)

    def part(self, kind: str) -> ShardPart | None:
        return next((p for p in self.parts if p.kind == kind), None)


@dataclass(frozen=True)
class Plan:
    """What a run will compute. ``bytes`` counts stored array bytes (store dtype), not metadata."""

    recipes: Mapping[str, RecipeRef]
    shards: tuple[Shard, ...]
    total_samples: int
    missing_samples: Mapping[str, int]   # per recipe kind
    skipped_quarantined: Mapping[str, int] = field(default_factory=dict)  # not retried
    total_keys: int = 0

    @property
    def missing_keys(self) -> int:
        return sum(self.missing_samples.get(k, 0) * r.recipe.keys_per_sample for k, r in self.recipes.items())

    @property
    def bytes(self) -> int:
        return sum(self.missing_samples.get(k, 0) * r.recipe.bytes_per_sample for k, r in self.recipes.items())

    @property
    def samples_to_compute(self) -> int:
        return sum(len(s.items) for s in self.shards)

    @property
    def is_empty(self) -> bool:
        return not self.shards


def part_id(recipe_id: str, sample_ids: Iterable[str]) -> str:
    """Deterministic store shard id: sha256 over the recipe id and the sorted sample ids."""
    h = hashlib.sha256(recipe_id.encode())
    for sid in sorted(sample_ids):
        h.update(b"\n" + sid.encode())
    return h.hexdigest()[:32]


def complete_samples(committed: Iterable[tuple[str, str, int, str]], recipe: RecipeRef) -> set[str]:
    """Sample ids for which every (view, position, layer) key of ``recipe`` is committed.

    ``committed`` yields (view, position, layer, sample_id), e.g. the rows of
    ``store.snapshot().committed_keys(recipe_id)``.
    """
    wanted = set(recipe.recipe.keys())
    have: dict[str, set[tuple[str, str, int]]] = {}
    for view, position, layer, sid in committed:
        key = (view, position, int(layer))
        if key in wanted:
            have.setdefault(sid, set()).add(key)
    return {sid for sid, keys in have.items() if len(keys) == len(wanted)}


def make_plan(
    items: Sequence[SampleItem],
    recipes: Mapping[str, RecipeRef],
    *,
    complete: Mapping[str, set[str]],
    shard_size: int,
    quarantined: Mapping[str, set[str]] | None = None,
) -> Plan:
    """Cut the missing (sample, recipe) pairs into shards; pure, so tests need no store.

    ``complete[kind]`` are samples already complete for that recipe; ``quarantined[kind]``
    samples that failed before (their errors are in the store) and are not retried.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    quarantined = quarantined or {}
    by_id: dict[str, SampleItem] = {}
    for it in items:
        by_id.setdefault(it.sample_id, it)
    missing: dict[str, set[str]] = {}
    skipped: dict[str, int] = {}
    for kind in recipes:
        eligible = set(by_id) if kind == "input" else {s for s, it in by_id.items() if it.pair is not None}
        todo = eligible - complete.get(kind, set())
        q = todo & quarantined.get(kind, set())
        skipped[kind] = len(q)
        missing[kind] = todo - q
    order = sorted(set().union(*missing.values())) if missing else []
    shards = []
    for start in range(0, len(order), shard_size):
        chunk = order[start:start + shard_size]
        parts = []
        for kind, ref in recipes.items():
            ids = tuple(s for s in chunk if s in missing[kind])
            if ids:
                parts.append(ShardPart(kind, ref.recipe_id, part_id(ref.recipe_id, ids), ids))
        sid = hashlib.sha256("+".join(p.shard_id for p in parts).encode()).hexdigest()[:32]
        shards.append(Shard(sid, tuple(by_id[s] for s in chunk), tuple(parts)))
    total_keys = sum(
        (len(by_id) if k == "input" else sum(1 for it in by_id.values() if it.pair is not None))
        * r.recipe.keys_per_sample for k, r in recipes.items())
    return Plan(dict(recipes), tuple(shards), len(by_id), {k: len(v) for k, v in missing.items()},
                skipped, total_keys)
