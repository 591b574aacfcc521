"""The trained tiny LLaVA: a toy model on which steering measurably works, built offline.

- :mod:`~l2s_data.trained_tiny.data`: the training rows (synthetic-safety, benign queries,
  shapes-POPE) and the answers they teach;
- :mod:`~l2s_data.trained_tiny.train`: ``train_tiny(out_dir, seed=0)``, the training;
- :mod:`~l2s_data.trained_tiny.card`: the model card (held-out behaviour, scored with the
  evaluation's own phrase lists and POPE parse).

The checkpoint ``train_tiny(seed=0)`` writes is shipped as
:data:`l2s_data.models.tiny.TRAINED_TINY_LLAVA`. This package sits above ``evaluate/`` (its card
scores responses) and below the CLI and the demo.
"""

from l2s_data.trained_tiny.card import read_card, write_card
from l2s_data.trained_tiny.train import TinyTrainConfig, TrainedTiny, train_tiny

__all__ = ["TinyTrainConfig", "TrainedTiny", "train_tiny", "read_card", "write_card"]
