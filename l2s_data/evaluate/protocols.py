"""What evaluation takes of a model and of a store: the methods it calls, and nothing else.

:class:`~l2s_data.models.ModelAdapter` is an :class:`EvalModel` and
:class:`~l2s_data.store.Store` an :class:`EvalStore` (``tests/evaluate/test_protocols.py``
checks both); a test or a server may pass anything else that has these members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pyarrow as pa
import torch

from l2s_data.models.types import ChatInput, ContrastiveItem

__all__ = ["EvalModel", "EvalStore", "SQLStore"]


class EvalModel(Protocol):
    """The model evaluation steers: capture (h_X, P2S), a steering hook, generation."""

    hidden_size: int
    device: torch.device

    def fingerprint(self) -> str: ...

    def check_layers(self, layers: Sequence[int]) -> list[int]: ...

    def capture(self, items: Sequence[ChatInput], *, layers: Sequence[int], positions: Sequence[str],
                **kwargs: Any) -> dict[tuple[str, int], torch.Tensor]: ...

    def capture_contrastive(self, items: Sequence[ContrastiveItem], *, input_layers: Sequence[int],
                            input_positions: Sequence[str], pair_layers: Sequence[int],
                            pair_positions: Sequence[str], **kwargs: Any) -> dict[tuple, torch.Tensor]: ...

    def steering(self, layer: int, vectors: torch.Tensor, alpha: float) -> AbstractContextManager[None]: ...

    def encode_items(self, items: Sequence[ChatInput]) -> Any: ...

    def generate(self, items: Sequence[ChatInput], *, max_new_tokens: int, do_sample: bool = False,
                 seed: int | None = None, encoded: Any = None) -> list[str]: ...


class SQLStore(Protocol):
    """A store read through its catalog only (results and reports)."""

    url: str

    def sql(self, query: str, **kwargs: Any) -> pa.Table: ...


class EvalStore(SQLStore, Protocol):
    """The store evaluation reads its cache and recipes from and commits its rows to."""

    def snapshot(self) -> Any: ...

    def catalog(self, **kwargs: Any) -> Any: ...

    def recipe(self, recipe: str) -> Any: ...

    def put(self, table: str, rows: pa.Table | Sequence[Mapping[str, Any]], *,
            memberships: pa.Table | Sequence[Mapping[str, Any]] | None = None) -> bool: ...
