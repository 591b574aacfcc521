"""Value objects of the model layer: families, token positions, chat inputs."""

from __future__ import annotations

from dataclasses import dataclass

import PIL.Image

__all__ = ["FAMILIES", "POSITIONS", "VIEWS", "ChatInput", "ContrastiveItem"]

#: Supported model families (the keys of every per-family table in this package).
FAMILIES: tuple[str, ...] = ("llava", "qwen2-vl", "qwen2.5-vl")

#: Named token positions of a templated sequence (DESIGN.md section 1).
POSITIONS: tuple[str, ...] = (
    "prompt_last",
    "user_last",
    "completion_last",
    "completion_mean",
    "sequence_last",
    "sequence_last-1",
)

#: Views returned by ``ModelAdapter.capture_contrastive``.
VIEWS: tuple[str, ...] = ("input", "pos", "neg", "p2s")


@dataclass(frozen=True)
class ChatInput:
    """One templated sequence: user turn (image first, then ``query + suffix``), optionally
    followed by a teacher-forced assistant ``completion``.

    ``completion=None`` renders the assistant generation prompt instead (e.g. "ASSISTANT:").
    ``continuation``: token ids that continue the completion (what ``generate`` returned for
    it); the sequence is then the open-ended completion (no end of turn) followed by exactly
    these ids. ``None``: the completion is a closed assistant turn.
    """

    image: PIL.Image.Image
    query: str
    suffix: str = ""
    completion: str | None = None
    system: str | None = None
    continuation: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ContrastiveItem:
    """One sample's three views: ``input`` = (image, query) with the generation prompt;
    ``pos`` / ``neg`` = (image, query + suffix) answered by ``positive`` / ``negative``, each
    optionally continued by generated token ids (see :attr:`ChatInput.continuation`)."""

    image: PIL.Image.Image
    query: str
    suffix: str
    positive: str
    negative: str
    system: str | None = None
    positive_continuation: tuple[int, ...] | None = None
    negative_continuation: tuple[int, ...] | None = None

    def views(self) -> dict[str, ChatInput]:
        """The three :class:`ChatInput` sequences, keyed ``input``, ``pos``, ``neg``."""
        return {
            "input": ChatInput(self.image, self.query, system=self.system),
            "pos": ChatInput(self.image, self.query, self.suffix, self.positive, self.system,
                             self.positive_continuation),
            "neg": ChatInput(self.image, self.query, self.suffix, self.negative, self.system,
                             self.negative_continuation),
        }
