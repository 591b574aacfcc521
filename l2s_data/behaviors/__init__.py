"""Behaviors (contrastive pairs per category) and presets (whole protocols), as data files.

Shipped data lives in ``l2s_data/behaviors/data/behaviors/*.toml`` and
``l2s_data/behaviors/data/presets/*.toml``; a user's TOML file in the same format loads too.
"""

from l2s_data.behaviors.behavior import (
    Behavior,
    ContrastivePair,
    PairRule,
    list_behaviors,
    load_behavior,
)
from l2s_data.behaviors.preset import (
    CompletionSettings,
    GenerationSettings,
    Preset,
    SplitSettings,
    TargetScaling,
    TaskPreset,
    TrainerSettings,
    list_presets,
    load_preset,
)

__all__ = [
    "Behavior",
    "ContrastivePair",
    "PairRule",
    "list_behaviors",
    "load_behavior",
    "Preset",
    "TaskPreset",
    "CompletionSettings",
    "GenerationSettings",
    "TargetScaling",
    "TrainerSettings",
    "SplitSettings",
    "list_presets",
    "load_preset",
]
