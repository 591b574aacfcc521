"""Steering vectors: the L2S predictor (safetensors with metadata) and the baseline vectors.

Generation-time steering hooks live with the model adapters (``l2s_data.models``); this
package decides *what* vector is added, from the cache alone.
"""

from l2s_data.steer.baselines import BASELINES, mean_of, mean_s, mean_s_ba, norm_rnd, norm_rnd_of, p2s_star
from l2s_data.steer.predictor import FILE_FORMAT, Predictor, PredictorMeta, load_predictor, save_predictor
from l2s_data.steer.selection import Selection, check_key, read_selection, sample_labels

__all__ = [
    "Predictor", "PredictorMeta", "save_predictor", "load_predictor", "FILE_FORMAT",
    "BASELINES", "mean_s", "mean_s_ba", "norm_rnd", "p2s_star", "mean_of", "norm_rnd_of",
    "Selection", "read_selection", "check_key", "sample_labels",
]
