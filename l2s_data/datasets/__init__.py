"""Data sources -> samples + memberships (DESIGN 1).

A sample is one distinct model input, named by :func:`content_id` over (image bytes, query);
a membership places it in a data set (dataset, subset, question_id, category, label, split).
"""

from l2s_data.datasets.categories import MMSB_SCENARIOS, POPE_SUBSETS, SAFETY_LABELS
from l2s_data.datasets.ids import content_id
from l2s_data.datasets.mmsafetybench import IMAGE_KINDS, load_mmsafetybench
from l2s_data.datasets.pope import load_pope
from l2s_data.datasets.synthetic import SYNTHETIC_NAMES, make_synthetic
from l2s_data.datasets.tables import ERRORS_SCHEMA, DatasetTables, read_dataset, write_dataset

__all__ = [
    "DatasetTables",
    "read_dataset",
    "write_dataset",
    "content_id",
    "load_pope",
    "load_mmsafetybench",
    "IMAGE_KINDS",
    "make_synthetic",
    "SYNTHETIC_NAMES",
    "MMSB_SCENARIOS",
    "POPE_SUBSETS",
    "SAFETY_LABELS",
    "ERRORS_SCHEMA",
]
