"""Training L2S predictors from the cache: config, trainer, offline evaluation, sweeps, reports.

Nothing here imports transformers or loads a base model: every input comes from the store.
"""

from l2s_data.train.config import KeySpec, SplitSpec, TrainConfig, load_train_config, parse_train_config
from l2s_data.train.data import TrainData, load_data
from l2s_data.train.trainer import TrainResult, fit, train

__all__ = [
    "KeySpec", "SplitSpec", "TrainConfig", "load_train_config", "parse_train_config",
    "TrainData", "load_data", "TrainResult", "fit", "train",
]
