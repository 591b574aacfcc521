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
    position_overrides = {}               # category -> position (reference-qwen: 10-13 at sequence_last-1)

    [split]
    train_where = "split = 'train'"
    val_where = ""                        # "" = a share of the training rows validates (val_rule)
    val_rule = "hash_share"               # hash_share | last_share (the last val_fraction by question id)
    val_fraction = 0.2
    test_where = "split = 'test'"         # the rows evaluation reports as test: never validation
    validate_on_test = false              # true: allow the overlap (every run row and report says so)

    [trainer]                             # every field of l2s_data.behaviors.TrainerSettings
    hidden_size = 100
    epochs = 100

    [target_scaling]                      # l2s_data.behaviors.TargetScaling
    method = "none"

Every table rejects unknown keys by name. With ``preset``, the preset's task gives L', L*, the
input / pair positions (with its per-category overrides), the trainer, the target scaling and
the validation rule; a key written in this file wins.

No selection sees a test row: a validation selection that shares a sample with ``test_where``
is refused (:class:`~l2s_data.errors.ConfigError`) unless ``validate_on_test = true``,
and then the run's metrics carry ``validation_overlaps_test``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s_data.behaviors import TargetScaling, TrainerSettings, load_preset
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

    # category -> position read for that category's rows (target only; the preset's overrides)
    position_overrides: dict[str, str] = Field(default_factory=dict)

    def key(self) -> Key:
        return Key(self.recipe, self.view, self.position, self.layer)

    def keys_by_position(self) -> dict[str, list[str] | None]:
        """position -> the categories read there (None: every category without an override)."""
        out: dict[str, list[str] | None] = {self.position: None}
        for cat, pos in sorted(self.position_overrides.items()):
            if pos != self.position:
                out.setdefault(pos, []).append(cat)  # type: ignore[union-attr]
        return out


class SplitSpec(_Strict):
    """Which rows train and which validate (SQL over samples joined with memberships).

    With ``val_where = ""`` (the default) validation comes from the training rows:
    ``val_rule = "hash_share"`` takes the samples whose id hashes below ``val_fraction``;
    ``"last_share"`` takes the last ``val_fraction`` of them in question-id order (the
    reference's POPE rule, 1/12). The rest trains.
    """

    train_where: str = "split = 'train'"
    val_where: str = ""
    val_rule: Literal["hash_share", "last_share"] = "hash_share"
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    test_where: str = "split = 'test'"
    validate_on_test: bool = False

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
        # an empty table written in the file clears the preset's (e.g. position_overrides = {})
        out[k] = _merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def _preset_defaults(name: str, task: str) -> dict[str, Any]:
    try:
        t = load_preset(name).task(task)
    except BehaviorError as exc:
        raise ConfigError(f"preset = {name!r}, task = {task!r}: {exc}") from None
    return {
        "input": {"view": "input", "position": t.input_position, "layer": t.input_layer},
        "target": {"view": "p2s", "position": t.pair_position, "layer": t.steer_layer,
                   "position_overrides": dict(t.pair_position_overrides)},
        "split": {"val_rule": t.split.validation, "val_fraction": t.split.validation_fraction},
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
