"""Behaviors: per-category contrastive pairs (suffix S_c, positive P_c, negative N_c) as data.

A behavior file is TOML::

    name = "safety-llava"
    description = "..."

    [[pairs]]
    categories = ["01-Illegal_Activitiy", "02-HateSpeech"]   # "*" matches any category
    label = "yes"          # optional: the pair applies only to samples with this label
    suffix = " Is the user request safe or harmful?"        # appended to the query as is
    positive = "Harmful"
    negative = "Safe"

Lookup for (category, label): a rule naming the category beats "*"; within those, a rule
naming the label beats one without. Two rules for the same (category, label) are an error.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from l2s_data.errors import BehaviorError

__all__ = ["ContrastivePair", "PairRule", "Behavior", "load_behavior", "list_behaviors", "WILDCARD"]

WILDCARD = "*"
_DATA = "data/behaviors"


@dataclass(frozen=True)
class ContrastivePair:
    """What one sample's pos/neg views are built from."""

    suffix: str
    positive: str
    negative: str


@dataclass(frozen=True)
class PairRule:
    """One category (or "*") and optional label, mapped to a pair."""

    category: str
    label: str | None
    pair: ContrastivePair


class _PairModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    categories: list[str] = Field(min_length=1)
    label: str | None = None
    suffix: str = ""
    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class _BehaviorModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    description: str = ""
    pairs: list[_PairModel] = Field(min_length=1)


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"key {loc!r}: {err['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Behavior:
    """A named set of contrastive pair rules. Build with :func:`load_behavior` or :meth:`from_dict`."""

    name: str
    rules: tuple[PairRule, ...]
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        seen: dict[tuple[str, str | None], PairRule] = {}
        for r in self.rules:
            key = (r.category, r.label)
            if key in seen:
                raise BehaviorError(
                    f"behavior {self.name!r} ({self.source or 'in memory'}): two pairs for category "
                    f"{r.category!r}" + (f" and label {r.label!r}" if r.label else "")
                    + ". Fix: keep one."
                )
            seen[key] = r

    # ------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "") -> Behavior:
        """Validate a behavior's TOML content (unknown keys are refused, by name)."""
        try:
            m = _BehaviorModel.model_validate(data)
        except ValidationError as e:
            where = source or "behavior data"
            raise BehaviorError(f"{where}: invalid behavior: {_pydantic_message(e)}") from None
        rules = tuple(
            PairRule(c, p.label, ContrastivePair(p.suffix, p.positive, p.negative))
            for p in m.pairs
            for c in p.categories
        )
        return cls(m.name, rules, m.description, source)

    # ------------------------------------------------------------ lookup

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories named by a rule ("*" included when present), in file order."""
        return tuple(dict.fromkeys(r.category for r in self.rules))

    def covers(self, category: str) -> bool:
        return any(r.category in (category, WILDCARD) for r in self.rules)

    def pair_for(self, category: str, label: str | None = None) -> ContrastivePair:
        """The pair for one sample's category (and label, for label-dependent behaviors)."""
        for cat in (category, WILDCARD):
            rules = [r for r in self.rules if r.category == cat]
            if not rules:
                continue
            for r in rules:
                if r.label is not None and r.label == label:
                    return r.pair
            for r in rules:
                if r.label is None:
                    return r.pair
            labels = sorted(r.label for r in rules if r.label is not None)
            if label is None:
                raise BehaviorError(
                    f"behavior {self.name!r}: category {category!r} has label-dependent pairs "
                    f"(labels {labels}), but no label was given. Fix: pass the sample's label."
                )
            raise BehaviorError(
                f"behavior {self.name!r}: category {category!r} has no pair for label {label!r}; "
                f"known labels: {labels}."
            )
        known = sorted(self.categories)
        raise BehaviorError(
            f"behavior {self.name!r} has no pair for category {category!r}; known categories: "
            f"{known}. Fix: pick a behavior that covers it, or add a [[pairs]] entry for it."
        )

    # ------------------------------------------------------------ identity

    def spec(self) -> dict[str, Any]:
        """Canonical JSON-able content (hashed into recipes).

        Only what changes the activations: the rules, sorted by (category, label). The name,
        description and file location are left out, so a renamed copy hashes the same.
        """
        rules = sorted(self.rules, key=lambda r: (r.category, r.label or ""))
        return {
            "kind": "l2s.behavior",
            "version": 1,
            "pairs": [
                {"category": r.category, "label": r.label, "suffix": r.pair.suffix,
                 "positive": r.pair.positive, "negative": r.pair.negative}
                for r in rules
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        """The behavior as TOML-shaped data (one pair entry per rule)."""
        pairs = []
        for r in self.rules:
            p: dict[str, Any] = {"categories": [r.category]}
            if r.label is not None:
                p["label"] = r.label
            p.update(suffix=r.pair.suffix, positive=r.pair.positive, negative=r.pair.negative)
            pairs.append(p)
        return {"name": self.name, "description": self.description, "pairs": pairs}

# ---------------------------------------------------------------- loading


def _shipped(folder: str) -> dict[str, Any]:
    """name -> resource of every shipped TOML file in l2s_data/behaviors/<folder>/."""
    base = resources.files("l2s_data.behaviors").joinpath(folder)
    return {p.name[: -len(".toml")]: p for p in base.iterdir() if p.name.endswith(".toml")}


def _read_toml(text: str, source: str, kind: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BehaviorError(f"{source}: not valid TOML for a {kind}: {e}") from None


def list_behaviors() -> list[str]:
    """Names of the shipped behaviors, sorted."""
    return sorted(_shipped(_DATA))


def load_behavior(name_or_path: str | os.PathLike | Behavior) -> Behavior:
    """A shipped behavior by name (see :func:`list_behaviors`), or a user's TOML file."""
    if isinstance(name_or_path, Behavior):
        return name_or_path
    shipped = _shipped(_DATA)
    key = str(name_or_path)
    if key in shipped:
        res = shipped[key]
        return Behavior.from_dict(_read_toml(res.read_text("utf-8"), f"behavior {key!r}", "behavior"),
                                  source=f"l2s_data/behaviors/{_DATA}/{key}.toml")
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise BehaviorError(f"behavior file {str(path)!r} does not exist.")
        return Behavior.from_dict(_read_toml(path.read_text("utf-8"), str(path), "behavior"), source=str(path))
    raise BehaviorError(
        f"unknown behavior {key!r}: not a shipped name and not a .toml file. Shipped: "
        f"{list_behaviors()}."
    )
