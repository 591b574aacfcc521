"""Which token each named position reads, shown on a real conversation.

:func:`position_tokens` tokenizes the views of a :class:`ContrastiveItem` exactly as a capture
does and returns, per view and position, the token(s) read: what the behaviors README
tables show and what the format golden tests pin. Image tokens are shown as one
``<image x N>`` entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from l2s_data.models import families
from l2s_data.models.encoding import Encoded, plan_sequences, position_weights
from l2s_data.models.types import ContrastiveItem

__all__ = ["PositionToken", "position_tokens", "token_strings"]


@dataclass(frozen=True)
class PositionToken:
    """``tokens`` read by ``position`` in ``view`` (several for a mean), and on which sequence:
    the view's own, or ``"<view>:user"`` (the user turn alone, for ``user_last``)."""

    view: str
    position: str
    sequence: str
    indices: tuple[int, ...]
    tokens: tuple[str, ...]
    before: tuple[str, ...]   # up to three tokens before the first one read, for context


def token_strings(processor, ids: Sequence[int]) -> list[str]:
    """The vocabulary pieces of ``ids`` ("▁" and "Ġ" stay visible, as in the vocabulary)."""
    return list(processor.tokenizer.convert_ids_to_tokens(list(ids)))


def position_tokens(adapter, item: ContrastiveItem, want: dict[str, Sequence[str]]) -> list[PositionToken]:
    """Per view of ``want`` (view -> positions), the token(s) each position reads in ``item``."""
    vision = families.process_images(adapter.family, adapter.processor, [item.image])
    chats = item.views()
    encs: dict[str, list[Encoded]] = {v: [adapter.encode_chat(chats[v], vision.n_tokens[0])] for v in want}
    seqs, reads = plan_sequences(encs, {v: list(p) for v, p in want.items()}, key=lambda v, p: (v, p))
    out = []
    for name, got in reads.items():
        enc = seqs[name][0]
        pieces = token_strings(adapter.processor, enc.ids)
        for (view, position), _ in got:
            idx = tuple(t for t, _ in position_weights(enc, position))
            out.append(PositionToken(view, position, name, idx, tuple(pieces[t] for t in idx),
                                     tuple(pieces[max(0, idx[0] - 3): idx[0]])))
    return sorted(out, key=lambda r: (list(want).index(r.view), list(want[r.view]).index(r.position)))
