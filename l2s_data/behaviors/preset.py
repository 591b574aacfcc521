"""Presets: every protocol choice of a task (safety, POPE) named in one TOML file.

A preset names, per task: the behavior (and the behaviour-agnostic one for Mean-S(BA)), the
input position and pair positions (with per-category overrides), the layers L' (input) and
L* (steering), the completion settings (sampled continuation), the target scaling, the
trainer settings, alpha and the split protocol. Shipped presets: ``reference-llava`` and
``reference-qwen`` (the paper's code: the reference protocol of DESIGN.md section 1), ``default-llava`` and
``default-qwen`` (the clean defaults). Every field is required in a preset file, so a preset
says everything it decides; the defaults below document the clean protocol.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from l2s_data.behaviors.behavior import (
    Behavior,
    _pydantic_message,
    _read_toml,
    _shipped,
    load_behavior,
)
from l2s_data.errors import BehaviorError

__all__ = [
    "PRESET_POSITIONS",
    "CompletionSettings",
    "GenerationSettings",
    "TargetScaling",
    "TrainerSettings",
    "SplitSettings",
    "TaskPreset",
    "Preset",
    "load_preset",
    "list_presets",
]

_DATA = "data/presets"

#: The named token positions of the model adapters (DESIGN.md section 1).
PRESET_POSITIONS = (
    "prompt_last", "user_last", "completion_last", "completion_mean", "sequence_last", "sequence_last-1",
)
Position = Literal[
    "prompt_last", "user_last", "completion_last", "completion_mean", "sequence_last", "sequence_last-1"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompletionSettings(_Strict):
    """How pos/neg completions are extended before they are read.

    ``max_new_tokens = 0``: the fixed completion P_c / N_c is read as is. Otherwise up to that
    many tokens are generated after it (sampled when ``do_sample``, seeded by ``seed``) and
    the pair position is read on the extended sequence (``completion_mean`` then averages
    over every token after the prompt: the completion text and the generated tokens). The
    generated tokens are carried as token ids, never decoded and re-encoded.

    ``include_last_generated``: whether the last generated token is fed back (and so is in
    the mean) when generation stops at ``max_new_tokens``. The reference feeds back every
    generated token but the last one produced (the end of sequence, or the N-th), so the
    reference presets set it to false. An end-of-sequence token is never fed back.
    """

    max_new_tokens: int = Field(0, ge=0)
    do_sample: bool = False
    seed: int = 0
    include_last_generated: bool = False


class TargetScaling(_Strict):
    """Rescaling of P2S targets before training.

    ``group_mean_norm``: each group's vectors are multiplied by
    mean_norm(reference_group) / mean_norm(group), so every behaviour group has the reference
    group's mean norm. ``none``: targets are used as extracted.
    """

    method: Literal["none", "group_mean_norm"] = "none"
    reference_group: str | None = None
    groups: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("reference_group", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v  # TOML has no null: "" names "none"

    @model_validator(mode="after")
    def _check(self) -> TargetScaling:
        if self.method == "none":
            return self
        if not self.groups or self.reference_group not in self.groups:
            raise ValueError(
                f"group_mean_norm needs 'groups' and a 'reference_group' among them; got "
                f"reference_group={self.reference_group!r}, groups={sorted(self.groups)}"
            )
        seen: dict[str, str] = {}
        for g, cats in self.groups.items():
            for c in cats:
                if c in seen:
                    raise ValueError(f"category {c!r} is in both groups {seen[c]!r} and {g!r}")
                seen[c] = g
        return self


class TrainerSettings(_Strict):
    """The L2S predictor g and its training (see DESIGN.md section 1).

    Loss per sample: mse_weight * MSE + l1_weight * L1 - w_e * cos, with
    w_e = cos_weight * min(1, epoch / cos_ramp_epochs) when cos_ramp_epochs > 0, else cos_weight.

    Best-epoch selection (``select = "best_validation"``) ranks epochs by a fixed criterion,
    the same at every epoch and over every validation row alike: mse_weight * MSE + l1_weight
    * L1 - criterion_cos_weight * cos (the reference: MSE + L1 - 0.05 cos). A loss whose cosine
    weight ramps would favour late epochs for identical predictions.

    ``balance_labels``: every batch's loss is the mean of its per-label mean losses, so yes and
    no samples count equally in each step (the reference's POPE training).
    """

    hidden_size: int = Field(100, ge=1)  # H
    mse_weight: float = 1.0
    l1_weight: float = 0.0
    cos_weight: float = 0.0
    cos_ramp_epochs: int = Field(0, ge=0)
    decoder_init: Literal["default", "truncated_svd", "dictionary_learning"] = "default"
    optimizer: Literal["adam"] = "adam"
    lr: float = Field(1e-4, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(0, ge=0)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    select: Literal["last_epoch", "best_validation"] = "last_epoch"
    criterion_cos_weight: float = 0.0  # the fixed selection criterion's cosine weight
    balance_labels: bool = False  # weight the loss so yes and no samples count equally (POPE)


class SplitSettings(_Strict):
    """How samples are split into train and test.

    ``by_image``: whole images go to one side. ``shuffle``: items shuffled by numpy's legacy
    ``np.random.seed(seed)`` and the first ``1 - test_fraction`` go to train (the reference
    on MM-SafetyBench). ``separate_train_set``: training data comes from another set (the
    reference's POPE training set, not public); where none is given, ``by_image`` with these
    ``test_fraction`` / ``seed`` is the fallback.

    Validation rows always come from the training data, never from test:
    ``validation = "hash_share"`` takes the training samples whose id hashes below
    ``validation_fraction`` (the clean defaults); ``"last_share"`` takes the last
    ``validation_fraction`` of the training samples in question order (the reference: the last
    1/12 of POPE's training set).
    """

    method: Literal["by_image", "shuffle", "separate_train_set"] = "by_image"
    test_fraction: float = Field(0.2, ge=0.0, le=1.0)
    seed: int = 0
    validation: Literal["hash_share", "last_share"] = "hash_share"
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class GenerationSettings(_Strict):
    """How an evaluation generates the answers it scores.

    ``do_sample``: sample with the checkpoint's generation config (the HF defaults where it has
    none), else greedy. ``max_new_tokens`` for steered methods, ``max_new_tokens_unsteered``
    for ``none`` and ``prompt-only`` (the reference's POPE: 128 and 100). ``dtype``: the
    model's compute dtype.
    """

    do_sample: bool = False
    max_new_tokens: int = Field(128, ge=1)
    max_new_tokens_unsteered: int = Field(128, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"


class TaskPreset(_Strict):
    """Everything one task (safety or POPE) decides."""

    dataset: str
    behavior: str
    baseline_behavior: str | None = None  # behaviour-agnostic pair for Mean-S(BA)
    input_position: Position = "prompt_last"
    pair_position: Position = "completion_last"
    pair_position_overrides: dict[str, Position] = Field(default_factory=dict)  # category -> position
    input_layer: int = Field(ge=0)  # L'
    steer_layer: int = Field(ge=0)  # L*
    alpha: float
    completion: CompletionSettings = CompletionSettings()
    generation: GenerationSettings = GenerationSettings()
    target_scaling: TargetScaling = TargetScaling()
    trainer: TrainerSettings = TrainerSettings()
    split: SplitSettings = SplitSettings()

    @field_validator("baseline_behavior", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v  # TOML has no null: "" names "none"

    def pair_position_for(self, category: str) -> str:
        """The position pos/neg/p2s are read at for one category (the read position)."""
        return self.pair_position_overrides.get(category, self.pair_position)

    def load_behavior(self) -> Behavior:
        return load_behavior(self.behavior)


class Preset(_Strict):
    """A named protocol: which model family, and per task every setting (see module doc)."""

    name: str
    description: str
    family: Literal["llava", "qwen2-vl", "qwen2.5-vl"]
    reference: bool  # True: reproduces the paper's code, divergences included
    safety: TaskPreset
    pope: TaskPreset

    def spec(self) -> dict[str, Any]:
        """Canonical JSON-able content (every field, defaults included)."""
        return self.model_dump(mode="json")

    def task(self, name: str) -> TaskPreset:
        if name not in ("safety", "pope"):
            raise BehaviorError(f"preset {self.name!r} has no task {name!r}; tasks: ['pope', 'safety'].")
        return getattr(self, name)


def _unfilled(data: dict[str, Any], model: type[BaseModel], where: str) -> list[str]:
    """Fields a preset file leaves to defaults: shipped presets must name every one."""
    missing = []
    for name, f in model.model_fields.items():
        key = f"{where}{name}"
        if name not in data:
            missing.append(key)
            continue
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(data[name], dict):
            missing.extend(_unfilled(data[name], ann, key + "."))
    return missing


def preset_from_dict(data: dict[str, Any], *, source: str = "", require_all: bool = False) -> Preset:
    """Validate a preset; with ``require_all`` every field must be written out."""
    where = source or "preset data"
    if require_all:
        missing = _unfilled(data, Preset, "")
        if missing:
            raise BehaviorError(f"{where}: preset leaves fields unnamed: {missing}.")
    try:
        preset = Preset.model_validate(data)
    except ValidationError as e:
        raise BehaviorError(f"{where}: invalid preset: {_pydantic_message(e)}") from None
    for task in (preset.safety, preset.pope):
        for b in (task.behavior, task.baseline_behavior):
            if b is not None:
                try:
                    load_behavior(b)
                except BehaviorError as e:
                    raise BehaviorError(f"{where}: {e}") from None
    return preset


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(_shipped(_DATA))


def load_preset(name_or_path: str | os.PathLike) -> Preset:
    """A shipped preset by name (see :func:`list_presets`), or a user's TOML file."""
    shipped = _shipped(_DATA)
    key = str(name_or_path)
    if key in shipped:
        text = shipped[key].read_text("utf-8")
        src = f"l2s_data/behaviors/{_DATA}/{key}.toml"
        return preset_from_dict(_read_toml(text, src, "preset"), source=src, require_all=True)
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise BehaviorError(f"preset file {str(path)!r} does not exist.")
        return preset_from_dict(_read_toml(path.read_text("utf-8"), str(path), "preset"), source=str(path))
    raise BehaviorError(f"unknown preset {key!r}: not a shipped name and not a .toml file. Shipped: {list_presets()}.")


