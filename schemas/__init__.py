"""The on-disk contract of l2s-data: Arrow schemas of every Parquet table, versioned.

This folder is installed as ``l2s_data.schemas``. Golden tests in ``tests/test_schemas.py``
pin every schema exactly: a change here is a format change and must bump ``FORMAT_VERSION``.
"""

from __future__ import annotations

import pyarrow as pa

#: Bumped on any change to a schema below or to the store layout.
FORMAT_VERSION = 1

#: One row per distinct model input. ``sample_id`` hashes (image bytes, query).
SAMPLES = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        # Path of the image, relative to the dataset directory that holds samples.parquet
        # (or absolute when the user's image folder lives elsewhere).
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ],
    metadata={"l2s.table": "samples", "l2s.format_version": str(FORMAT_VERSION)},
)

#: One row per (dataset, subset, question) pointing at a sample. Many rows may share a sample.
MEMBERSHIPS = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("subset", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        # POPE: "yes" / "no"; safety: the desired behaviour ("refuse" / "defer"); may be null.
        pa.field("label", pa.string(), nullable=True),
        pa.field("split", pa.string(), nullable=False),
    ],
    metadata={"l2s.table": "memberships", "l2s.format_version": str(FORMAT_VERSION)},
)

__all__ = ["FORMAT_VERSION", "SAMPLES", "MEMBERSHIPS"]
