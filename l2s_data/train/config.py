"""The training config: which stored keys to map, which rows, and how to train.

::

    store = "demo-out/store"
    out_dir = "demo-out/train-runs"       # predictors land in <out_dir>/<run_id>/
    seed = 0
    preset = "reference-llava"            # optional: a preset's task fills what is not set here
    task = "safety"

    [input]                               # h_X: view input at layer L'
    recipe = "demo-input"
    position = "prompt_last"
    layer = 2

    [target]                              # v_X: view p2s at layer L*
    recipe = "demo-pair"
    position = "completion_last"
    layer = 2

    [split]
    train_where = "split = 'train'"
    val_where = "split = 'test'"          # "" = hold out val_fraction of the training rows

    [trainer]                             # every field of l2s_data.behaviors.TrainerSettings
    hidden_size = 100
    epochs = 100

    [target_scaling]                      # l2s_data.behaviors.TargetScaling
    method = "none"

Every table rejects unknown keys by name. With ``preset``, the preset's task gives L', L*, the
input / pair positions, the trainer and the target scaling; a key written in this file wins.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s_data.behaviors import TargetScaling, TrainerSettings
from l2s_data.configfile import read_toml, validation_message
from l2s_data.errors import BehaviorError, ConfigError
from l2s_data.store import Key

__all__ = ["KeySpec", "SplitSpec", "TrainConfig", "parse_train_config", "load_train_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySpec(_Strict):
    """A stored column: recipe (id or registered name), view, position, layer."""

    recipe: str = Field(min_length=1)
    view: str
    position: str
    layer: int = Field(ge=0)

    def key(self) -> Key:
        return Key(self.recipe, self.view, self.position, self.layer)


class SplitSpec(_Strict):
    """Which rows train and which validate (SQL over samples joined with memberships)."""

    train_where: str = "split = 'train'"
    val_where: str = "split = 'test'"
    # Used when val_where is "": this share of the training samples, chosen by seed, validates.
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)

    @field_validator("train_where")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("train_where must select the training rows, e.g. \"split = 'train'\"")
        return v


class BaselineSpec(_Strict):
    """Baselines the offline evaluation compares with (Mean-S is always computed)."""

    # Recipe (id or name) of a behaviour-agnostic pair extraction, for Mean-S(BA); "" = none.
    agnostic_recipe: str = ""
    norm_rnd_seed: int = 0


class TrainConfig(_Strict):
    """The whole training config (see the module docstring)."""

    store: str
    out_dir: str = "train-runs"
    name: str = "train"
    seed: int = 0
    preset: str = ""
    task: Literal["safety", "pope"] = "safety"
    input: KeySpec
    target: KeySpec
    split: SplitSpec = SplitSpec()
    trainer: TrainerSettings = TrainerSettings()
    target_scaling: TargetScaling = TargetScaling()
    baselines: BaselineSpec = BaselineSpec()
    # "auto": read the selection into memory once when it fits memory_budget bytes, else stream
    # it from the store every epoch. true / false force one or the other.
    in_memory: Literal["auto", True, False] = "auto"
    memory_budget: int = Field(2 << 30, ge=0)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, JSON-able (saved with every run)."""
        return self.model_dump(mode="json")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _preset_defaults(name: str, task: str) -> dict[str, Any]:
    from l2s_data.behaviors import load_preset

    try:
        t = load_preset(name).task(task)
    except BehaviorError as exc:
        raise ConfigError(f"preset = {name!r}, task = {task!r}: {exc}") from None
    return {
        "input": {"view": "input", "position": t.input_position, "layer": t.input_layer},
        "target": {"view": "p2s", "position": t.pair_position, "layer": t.steer_layer},
        "trainer": t.trainer.model_dump(mode="json"),
        "target_scaling": t.target_scaling.model_dump(mode="json"),
    }


def parse_train_config(data: dict[str, Any], *, source: str = "<dict>") -> TrainConfig:
    """Validate a config dict (a preset fills what it leaves out); ConfigError names bad keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"training config {source} must be a table of keys, got {type(data).__name__}")
    data = copy.deepcopy(data)
    base: dict[str, Any] = {"input": {"view": "input"}, "target": {"view": "p2s"}}
    if data.get("preset"):
        base = _merge(base, _preset_defaults(str(data["preset"]), str(data.get("task", "safety"))))
    try:
        return TrainConfig.model_validate(_merge(base, data))
    except ValidationError as err:
        raise ConfigError(validation_message(err, f"training config {source}")) from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a TOML training config."""
    return parse_train_config(read_toml(path, "training config", example="l2s_data/train/configs/*.toml"),
                              source=repr(str(path)))
