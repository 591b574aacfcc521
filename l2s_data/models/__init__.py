"""Model layer: load an MLLM from a local directory, format chats, capture and steer.

Public API::

    from l2s_data.models import FAMILIES, POSITIONS, ChatInput, ContrastiveItem, ModelAdapter, \\
        load_adapter, make_tiny

The names are imported on first use: the adapter, the loader and the tiny checkpoints bring in
transformers, which costs more start-up time than the whole extraction package (measured with
``python -X importtime``), and which the value types of ``types`` and planning do not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "FAMILIES",
    "POSITIONS",
    "VIEWS",
    "ChatInput",
    "ContrastiveItem",
    "ModelAdapter",
    "detect_family",
    "load_adapter",
    "make_tiny",
]

_WHERE = {
    "ModelAdapter": "l2s_data.models.adapter",
    "detect_family": "l2s_data.models.loading",
    "load_adapter": "l2s_data.models.loading",
    "make_tiny": "l2s_data.models.tiny",
    "FAMILIES": "l2s_data.models.types",
    "POSITIONS": "l2s_data.models.types",
    "VIEWS": "l2s_data.models.types",
    "ChatInput": "l2s_data.models.types",
    "ContrastiveItem": "l2s_data.models.types",
}

if TYPE_CHECKING:  # pragma: no cover
    from l2s_data.models.adapter import ModelAdapter
    from l2s_data.models.loading import detect_family, load_adapter
    from l2s_data.models.tiny import make_tiny
    from l2s_data.models.types import FAMILIES, POSITIONS, VIEWS, ChatInput, ContrastiveItem


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'l2s_data.models' has no attribute {name!r}")
