"""Where an evaluation reads each sample's P2S, and which samples need one computed live.

A pair position may depend on the category (the reference's Qwen2-VL safety reads 10-13 at
``sequence_last-1``): :class:`PairPositions` holds the default and the per-category overrides.
They come from ``[cache] pair_position`` / ``pair_position_overrides`` or, when those are left
out, from the L2S predictor's training (its target key and ``target.position_overrides``);
when both are given they must agree, since P2S*, Norm-Rnd and Mean-S are only comparable with
L2S when read where L2S learned.

A sample whose P2S the cache lacks gets one computed live from its contrastive pair. That is
never silent: :func:`missing_p2s` lists those samples, the run prints and records their count,
and ``[cache] strict = true`` refuses the run instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from l2s_data.errors import ConfigError, KeyNotFoundError
from l2s_data.steer import load_predictor

__all__ = ["PairPositions", "resolve_pair_positions", "trained_pair_positions", "missing_p2s", "live_p2s_count"]

DEFAULT_PAIR_POSITION = "completion_last"


@dataclass(frozen=True)
class PairPositions:
    """The position a sample's P2S is read at: ``overrides[category]``, else ``default``."""

    default: str = DEFAULT_PAIR_POSITION
    overrides: Mapping[str, str] = field(default_factory=dict)

    def of(self, category: str | None) -> str:
        return self.overrides.get(category, self.default) if category is not None else self.default

    def groups(self, categories: Mapping[str, str | None], sample_ids: Iterable[str]) -> dict[str, list[str]]:
        """position -> the sample ids read there."""
        out: dict[str, list[str]] = {}
        for s in sample_ids:
            out.setdefault(self.of(categories.get(s)), []).append(s)
        return out

    def describe(self) -> str:
        extra = {c: p for c, p in self.overrides.items() if p != self.default}
        return self.default + (f" ({', '.join(f'{c}: {p}' for c, p in sorted(extra.items()))})" if extra else "")


def trained_pair_positions(predictor: Any) -> tuple[str | None, dict[str, str]]:
    """(target position, per-category overrides) a predictor file was trained with; (None, {})
    when it does not say. ``predictor`` is a :class:`~.vectors.PredictorFile` or a path (read
    without loading the model)."""
    if predictor is None:
        return None, {}
    if isinstance(predictor, (str, bytes)) or hasattr(predictor, "__fspath__"):
        _, meta = load_predictor(predictor)
        key, overrides = meta.target_key, meta.config.get("target", {}).get("position_overrides", {})
    else:
        key, overrides = getattr(predictor, "target_key", None) or {}, getattr(predictor, "position_overrides", None)
    return key.get("position"), dict(overrides or {})


def resolve_pair_positions(configured: str, configured_overrides: Mapping[str, str],
                           trained: str | None, trained_overrides: Mapping[str, str]) -> PairPositions:
    """The configured positions, else the predictor's; a disagreement is refused by name."""
    if configured and trained is not None and configured != trained:
        raise ConfigError(f"[cache] pair_position = {configured!r}, but the L2S predictor was trained with the "
                          f"target (pair) position = {trained!r}; set [cache] pair_position to {trained!r} (or leave "
                          f"it out), or use a predictor trained for {configured!r}.")
    if configured_overrides and trained is not None and dict(configured_overrides) != dict(trained_overrides):
        raise ConfigError(f"[cache] pair_position_overrides = {dict(configured_overrides)}, but the L2S predictor was "
                          f"trained with {dict(trained_overrides)}; leave the key out to use the predictor's.")
    default = configured or trained or DEFAULT_PAIR_POSITION
    return PairPositions(default, dict(configured_overrides or trained_overrides or {}))


def missing_p2s(snapshot: Any, recipe: str | None, layer: int, positions: PairPositions,
                categories: Mapping[str, str | None], sample_ids: Iterable[str]) -> list[str]:
    """The sample ids whose P2S the cache lacks at their position (all of them without a recipe)."""
    missing: list[str] = []
    for pos, ids in positions.groups(categories, sorted(sample_ids)).items():
        have: Any = ()
        if recipe is not None:
            try:
                have = snapshot.index(recipe, "p2s", pos, layer)
            except KeyNotFoundError:
                have = ()
        missing.extend(s for s in ids if s not in have)
    return sorted(missing)


def live_p2s_count(snapshot: Any, recipe: str | None, layer: int, positions: PairPositions,
                   categories: Mapping[str, str | None], *, strict: bool) -> int:
    """How many of the samples in ``categories`` need a live P2S; with ``strict``, any is refused."""
    missing = missing_p2s(snapshot, recipe, layer, positions, categories, categories)
    if missing and strict:
        raise ConfigError(
            f"{len(missing)} of {len(categories)} evaluated sample(s) have no cached P2S at {positions.describe()}, "
            f"layer {layer} (e.g. {missing[:3]}), and [cache] strict = true refuses to compute them live: extract "
            f"the pair recipe for them, or set strict = false (the run then records how many were live)."
        )
    return len(missing)
