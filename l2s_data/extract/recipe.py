"""Recipes: the part of an extraction that changes the numbers, hashed by the store into an id.

An extraction writes two recipes at most:

- the ``input`` recipe (view ``input``): model identity, positions, layers, store dtype and the
  system message. It holds no behavior, so every behavior's run on the same model shares it;
- the ``pair`` recipe (views ``pos`` / ``neg`` / ``p2s``): the same, plus the behavior's
  canonical spec and the completion settings (sampled continuation).

Batch size, shard size, prefix sharing and the store URL are not part of a recipe: they change
how keys are computed, not which keys exist (prefix sharing equals separate forwards within
dtype tolerance; "idempotent" means the same keys, not the same bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from l2s_data.errors import ConfigError
from l2s_data.store.contract import STORED_DTYPE, canonical_json, recipe_id

from l2s_data.extract.config import DTYPES, INPUT_VIEWS, PAIR_VIEWS

if TYPE_CHECKING:  # transformers: imported when a model is loaded
    from l2s_data.models import ModelAdapter

__all__ = ["RECIPE_FORMAT", "ModelIdentity", "Recipe", "RecipeRef", "make_recipes", "canonical_json",
           "local_recipe_id", "DTYPE_BYTES"]

#: Bumped when the meaning of a recipe spec changes (it is part of every spec, so of every id).
RECIPE_FORMAT = 1

#: Bytes per stored value, from the store's one dtype table.
DTYPE_BYTES = {name: dt.itemsize for name, dt in STORED_DTYPE.items()}


def local_recipe_id(spec: Mapping[str, Any]) -> str:
    """The id ``Store.put_recipe`` gives ``spec``, computed without a store (dry runs)."""
    return recipe_id(spec)


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies the model's numbers: weights+processor fingerprint, family, dtype, attention."""

    fingerprint: str
    family: str
    dtype: str
    attn_implementation: str

    def to_dict(self) -> dict[str, str]:
        return {"fingerprint": self.fingerprint, "family": self.family, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation}

    @classmethod
    def of(cls, adapter: ModelAdapter, *, attn_implementation: str) -> "ModelIdentity":
        dtype = str(adapter.dtype).removeprefix("torch.")
        return cls(adapter.fingerprint(), adapter.family, dtype, attn_implementation)


@dataclass(frozen=True)
class Recipe:
    """One recipe. ``spec()`` is what the store hashes; the rest is derived.

    Keys per sample = ``len(views) * len(positions) * len(layers)``, each a ``[D]`` vector.
    """

    kind: Literal["input", "pair"]
    model: ModelIdentity
    views: tuple[str, ...]
    positions: tuple[str, ...]
    layers: tuple[int, ...]
    store_dtype: str
    system: str | None = None
    behavior_json: str | None = None  # canonical JSON of Behavior.spec() (pair recipes only)
    completion: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) (pair recipes only)
    hidden_size: int = field(default=0, compare=False)  # D; for byte estimates, not hashed

    def __post_init__(self) -> None:
        allowed = INPUT_VIEWS if self.kind == "input" else PAIR_VIEWS
        if not self.views or any(v not in allowed for v in self.views):
            raise ConfigError(f"a {self.kind} recipe holds views from {list(allowed)}, got {list(self.views)}")
        if self.kind == "input" and (self.behavior_json is not None or self.completion):
            raise ConfigError("the input recipe must not hold a behavior or completion settings: "
                              "it is shared across behaviors")
        if self.kind == "pair" and self.behavior_json is None:
            raise ConfigError("a pair recipe (pos/neg/p2s) needs a behavior: set [behavior] "
                              "behavior = \"...\" or preset = \"...\" in the config")
        if self.store_dtype not in DTYPES:
            raise ConfigError(f"store_dtype {self.store_dtype!r} is not one of {list(DTYPES)}")
        if not self.positions or not self.layers:
            raise ConfigError(f"the {self.kind} recipe needs at least one position and one layer")

    @property
    def keys_per_sample(self) -> int:
        return len(self.views) * len(self.positions) * len(self.layers)

    @property
    def bytes_per_sample(self) -> int:
        return self.keys_per_sample * self.hidden_size * DTYPE_BYTES[self.store_dtype]

    def keys(self) -> list[tuple[str, str, int]]:
        """Every (view, position, layer) this recipe stores for one sample."""
        return [(v, p, layer) for v in self.views for p in self.positions for layer in self.layers]

    def spec(self) -> dict[str, Any]:
        """The JSON-able dict the store hashes (``Store.put_recipe``)."""
        out: dict[str, Any] = {
            "format": RECIPE_FORMAT,
            "kind": self.kind,
            "model": self.model.to_dict(),
            "views": list(self.views),
            "positions": list(self.positions),
            "layers": list(self.layers),
            "store_dtype": self.store_dtype,
            "system": self.system,
        }
        if self.kind == "pair":
            out["behavior"] = json.loads(self.behavior_json or "null")
            out["completion"] = dict(self.completion)
        return out

    def local_id(self) -> str:
        return local_recipe_id(self.spec())


@dataclass(frozen=True)
class RecipeRef:
    """A recipe with the id the store gave it (or, in a dry run without a store, the local hash)."""

    recipe: Recipe
    recipe_id: str

    @property
    def kind(self) -> str:
        return self.recipe.kind


def make_recipes(
    *,
    model: ModelIdentity,
    hidden_size: int,
    views: Sequence[str],
    input_positions: Sequence[str],
    pair_positions: Sequence[str],
    input_layers: Sequence[int],
    pair_layers: Sequence[int],
    store_dtype: str,
    behavior_spec: Mapping[str, Any] | None,
    completion: Mapping[str, Any] | None = None,
    system: str | None = None,
) -> dict[str, Recipe]:
    """Split the requested views into the ``input`` and ``pair`` recipes (either may be absent).

    Views keep the canonical order input, pos, neg, p2s and positions / layers are sorted,
    whatever order the config lists them in, so that two configs asking for the same thing get
    the same recipe id.
    """
    recipes: dict[str, Recipe] = {}
    in_views = tuple(v for v in INPUT_VIEWS if v in views)
    pair_views = tuple(v for v in PAIR_VIEWS if v in views)
    if in_views:
        recipes["input"] = Recipe("input", model, in_views, _uniq(input_positions), tuple(sorted(set(input_layers))),
                                  store_dtype, system, hidden_size=hidden_size)
    if pair_views:
        if behavior_spec is None:
            raise ConfigError(f"views {list(pair_views)} need a behavior: set [behavior] behavior = "
                              f"\"<name or TOML path>\" or preset = \"<name>\" with task = \"safety\"|\"pope\"")
        comp = tuple(sorted((completion or {"max_new_tokens": 0, "seed": 0}).items()))
        recipes["pair"] = Recipe("pair", model, pair_views, _uniq(pair_positions), tuple(sorted(set(pair_layers))),
                                 store_dtype, system, canonical_json(dict(behavior_spec)), comp,
                                 hidden_size=hidden_size)
    return recipes


def _uniq(xs: Sequence[str]) -> tuple[str, ...]:
    """Sorted, without repeats: the order a config lists positions in does not change the id."""
    return tuple(sorted(set(xs)))
