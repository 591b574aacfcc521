"""Model layer: load an MLLM from a local directory, format chats, capture and steer.

Public API::

    from l2s_data.models import FAMILIES, POSITIONS, ChatInput, ContrastiveItem, ModelAdapter, \\
        load_adapter, make_tiny
"""

from l2s_data.models.adapter import ModelAdapter
from l2s_data.models.loading import detect_family, load_adapter
from l2s_data.models.tiny import make_tiny
from l2s_data.models.types import FAMILIES, POSITIONS, VIEWS, ChatInput, ContrastiveItem

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
