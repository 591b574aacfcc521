"""Chat formatting and tokenization, with the token positions of DESIGN.md section 1.

A :class:`ChatInput` is rendered by the processor's own chat template (user turn: image first,
then ``query + suffix``; then the generation prompt, or the teacher-forced completion),
tokenized once with character offsets, and its image placeholder is expanded to the number of
image tokens the vision tower produces (what the processor's ``__call__`` does; a test checks
the ids are equal). Every position names a token of a sequence the model sees:

- ``prompt_last``: the last token of the generation prompt (``:`` of "ASSISTANT:", the
  newline of ``<|im_start|>assistant\\n``);
- ``user_last``: the last token of the user turn rendered alone, without a generation prompt.
  With LLaVA that is the lone "▁" of ``USER: <image>\\n{query} ``: in the sequence with the
  generation prompt that space is part of "▁ASSISTANT", so the user turn is a sequence of its
  own (:attr:`Encoded.user`); with ChatML it is the newline after ``<|im_end|>``, a token of
  the longer sequence too (:meth:`Encoded.user_in_sequence`);
- ``completion_last`` / ``completion_mean``: the completion's tokens: the forced completion
  without the template's end of turn (what ``continue_final_message=True`` renders), followed
  by the generated continuation's ids when there is one;
- ``sequence_last`` / ``sequence_last-1``: the last two tokens of the whole sequence, end of
  turn included ("▁" after a LLaVA answer, the newline after ``<|im_end|>``).

A continuation (:attr:`ChatInput.continuation`) is appended as token ids to the tokens of the
open-ended rendering (``continue_final_message=True``), which is exactly what ``generate``
was prompted with: generated ids are never decoded and re-encoded.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from l2s_data.errors import InputError, PositionError
from l2s_data.memo import Memo
from l2s_data.models.types import POSITIONS, ChatInput

if TYPE_CHECKING:  # families brings in transformers; the encodings need only its Vision type
    from l2s_data.models.families import Vision

__all__ = ["Encoded", "EncodedItems", "messages_for", "render", "encode", "position_weights", "plan_sequences",
           "unpack_encoded"]


@dataclass(frozen=True)
class Encoded:
    """One tokenized sequence. Token indices are 0-based in the unpadded sequence."""

    ids: tuple[int, ...]                 # [L] with the image placeholder expanded
    image_span: tuple[int, int]          # [start, end) of the image tokens
    prompt_last: int                     # last token of the generation prompt (or of ids)
    completion: tuple[int, int] | None   # [start, end) of the completion tokens (+ continuation)
    user: tuple[int, ...]                # the user turn rendered alone, image expanded
    text: str                            # the rendered text (image placeholder not expanded)
    generated: int = 0                   # how many ids at the end are a continuation

    def __len__(self) -> int:
        return len(self.ids)

    def user_in_sequence(self) -> bool:
        """Whether the user turn's tokens begin this sequence (then ``user_last`` is one of its
        tokens; otherwise it is read on :meth:`user_turn`)."""
        return self.ids[: len(self.user)] == self.user

    def user_turn(self) -> "Encoded":
        """The user turn as a sequence of its own; its ``user_last`` is its last token."""
        n = len(self.user)
        return Encoded(self.user, self.image_span, n - 1, None, self.user, self.text)


def messages_for(item: ChatInput, *, with_completion: bool = True) -> list[dict]:
    """Chat messages of ``item``: optional system, user (image first), optional assistant."""
    messages: list[dict] = []
    if item.system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": item.system}]})
    messages.append(
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.query + item.suffix}]}
    )
    if with_completion and item.completion is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": item.completion}]})
    return messages


#: Entries kept per processor (a prompt's ids and offsets: a few KB).
_MEMO_SIZE = 2048
_MEMOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MEMOS_LOCK = threading.Lock()


def _memo(processor) -> Memo:
    """The last :data:`_MEMO_SIZE` rendered texts and tokenizations of ``processor``.

    Rendering (the processor's Jinja chat template) and tokenizing with offsets cost ~0.5 ms
    each, several per item, and the same texts come back often: a pair's positive and negative
    share their prompt and user turn, a question asked of many images shares its text. Both are
    pure functions of the processor and the text, which the key holds (with the template and
    the vocabulary's size, should either be changed in place)."""
    with _MEMOS_LOCK:
        memo = _MEMOS.get(processor)
        if memo is None:
            memo = _MEMOS[processor] = Memo(_MEMO_SIZE)
        return memo


def render(processor, messages: list[dict], **kwargs) -> str:
    """``messages`` rendered by the processor's chat template (remembered: see :func:`_memo`)."""
    key = ("render", getattr(processor, "chat_template", None), repr(messages), tuple(sorted(kwargs.items())))
    return _memo(processor).get(key, lambda: processor.apply_chat_template(messages, tokenize=False, **kwargs))


def _last_token_before(starts: list[int], end: int) -> int:
    """The last token that starts before character ``end`` (the BOS token starts at 0)."""
    return max((k for k, s in enumerate(starts) if s < end), default=0)


def _tokenize(processor, text: str, image_token_id: int) -> tuple[list[int], list[int], int]:
    key = ("tokenize", text, image_token_id, len(processor.tokenizer))
    ids, starts, where = _memo(processor).get(key, lambda: _tokenize_now(processor, text, image_token_id))
    return list(ids), list(starts), where


def _tokenize_now(processor, text: str, image_token_id: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    enc = processor.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    where = [k for k, t in enumerate(ids) if t == image_token_id]
    if len(where) != 1:
        raise InputError(
            f"expected exactly one image placeholder (token id {image_token_id}) in the rendered "
            f"sequence, found {len(where)}: {text[:120]!r}. Put the image in the user turn only "
            "and keep image tokens out of the query text."
        )
    return tuple(ids), tuple(s for s, _ in enc["offset_mapping"]), where[0]


def encode(processor, item: ChatInput, n_image_tokens: int, image_token_id: int) -> Encoded:
    """Render and tokenize ``item``; ``n_image_tokens`` is what its image expands to."""
    if item.continuation is not None and item.completion is None:
        raise InputError("a continuation needs the completion it continues: pass ChatInput(completion=...) "
                         "with continuation=(generated ids...)")
    user_msgs = messages_for(item, with_completion=False)
    prompt_text = render(processor, user_msgs, add_generation_prompt=True)
    user_text = render(processor, user_msgs, add_generation_prompt=False)
    completion_end = None
    if item.completion is None:
        full = prompt_text
    else:
        msgs = messages_for(item)
        opened = render(processor, msgs, continue_final_message=True)
        full = opened if item.continuation is not None else render(processor, msgs)
        # An empty completion has no tokens of its own (the template's spaces are not it).
        completion_end = len(opened) if item.completion.strip() else None
    for name, part in (("user turn", user_text), ("generation prompt", prompt_text)):
        if not full.startswith(part):
            raise InputError(
                f"the chat template renders the {name} {part[-40:]!r} differently inside the full "
                f"sequence {full[-80:]!r}; expected each turn to be a prefix of the conversation. "
                "Use a template that renders turns independently of what follows."
            )
    ids, starts, img = _tokenize(processor, full, image_token_id)
    user_ids, _, user_img = _tokenize(processor, user_text, image_token_id)
    shift = n_image_tokens - 1

    def expanded(j: int) -> int:
        return j if j < img else j + shift

    def expand(seq: list[int], at: int) -> tuple[int, ...]:
        return tuple(seq[:at] + [image_token_id] * n_image_tokens + seq[at + 1 :])

    prompt_last = expanded(_last_token_before(starts, len(prompt_text)))
    completion = None
    if completion_end is not None:
        first = next((k for k, s in enumerate(starts) if s >= len(prompt_text)), len(ids))
        last = _last_token_before(starts, completion_end)
        if last >= first:
            completion = (expanded(first), expanded(last) + 1)
    out = expand(ids, img)
    generated = 0
    if item.continuation is not None:
        generated = len(item.continuation)
        out = out + tuple(int(t) for t in item.continuation)
        if completion is not None:
            completion = (completion[0], len(out))
        elif generated:  # an empty forced completion: the continuation alone
            completion = (len(out) - generated, len(out))
    return Encoded(
        ids=out,
        image_span=(img, img + n_image_tokens),
        prompt_last=prompt_last,
        completion=completion,
        user=expand(user_ids, user_img),
        text=full,
        generated=generated,
    )


def position_weights(enc: Encoded, position: str) -> list[tuple[int, float]]:
    """Token indices (unpadded) and weights whose weighted sum is ``position``'s vector."""
    n = len(enc.ids)
    if position == "prompt_last":
        return [(enc.prompt_last, 1.0)]
    if position == "user_last":
        if not enc.user_in_sequence():
            raise PositionError(
                "position 'user_last' is not a token of this sequence (the user turn alone tokenizes "
                f"differently: {enc.text[-60:]!r}); read it on Encoded.user_turn()."
            )
        return [(len(enc.user) - 1, 1.0)]
    if position == "sequence_last":
        return [(n - 1, 1.0)]
    if position == "sequence_last-1":
        if n < 2:
            raise PositionError(f"position 'sequence_last-1' needs 2 tokens, the sequence has {n}.")
        return [(n - 2, 1.0)]
    if position in ("completion_last", "completion_mean"):
        if enc.completion is None:
            raise PositionError(
                f"position {position!r} needs a teacher-forced completion, but the sequence "
                f"{enc.text[-60:]!r} has none; pass ChatInput(completion=...) or read 'prompt_last'."
            )
        start, end = enc.completion
        if position == "completion_last":
            return [(end - 1, 1.0)]
        return [(t, 1.0 / (end - start)) for t in range(start, end)]
    raise PositionError(f"position {position!r} is unknown; expected one of {', '.join(POSITIONS)}.")


def plan_sequences(encs: dict[str, list[Encoded]], want: dict[str, list[str]], *, key) -> tuple[
        dict[str, list[Encoded]], dict[str, list[tuple[tuple, str]]]]:
    """The sequences a capture runs, and what it reads from each.

    ``encs``: view -> one :class:`Encoded` per item; ``want``: view -> positions; ``key(view,
    position)``: the gather key a read fills. Returns (sequences, reads): each view is a
    sequence; where ``user_last`` is not a token of some item's sequence (LLaVA: the user
    turn's trailing space merges into "▁ASSISTANT"), the user turns alone are one more
    sequence, ``"<view>:user"``, read at its last token (and the view itself runs only if
    another position is read on it).
    """
    seqs: dict[str, list[Encoded]] = {}
    reads: dict[str, list[tuple[tuple, str]]] = {}
    for v, positions in want.items():
        seqs[v] = encs[v]
        reads[v] = []
        for p in positions:
            if p == "user_last" and not all(e.user_in_sequence() for e in encs[v]):
                seqs[f"{v}:user"] = [e.user_turn() for e in encs[v]]
                reads[f"{v}:user"] = [(key(v, p), p)]
            else:
                reads[v].append((key(v, p), p))
        if not reads[v]:  # every position of the view is read on its user turn
            del seqs[v], reads[v]
    return seqs, reads


def unpack_encoded(encoded: tuple[Sequence[Encoded], Vision], n: int) -> tuple[list[Encoded], Vision]:
    """An ``encode_items`` result handed back by a caller, checked to hold ``n`` items."""
    encs, vision = encoded
    if len(encs) != n or len(vision.n_tokens) != n:
        raise InputError(f"encoded inputs hold {len(encs)} sequences and {len(vision.n_tokens)} images for {n} "
                         "items; encode the same items (encode_items) and pass the result unchanged")
    return list(encs), vision


@dataclass(frozen=True)
class EncodedItems:
    """Items tokenized for a contrastive capture: ``views[v][i]`` is item i's sequence of view
    ``v``; ``vision`` holds their images, row i = item i (:meth:`ModelAdapter.encode_contrastive`)."""

    views: dict[str, list[Encoded]]
    vision: Vision

    def __len__(self) -> int:
        return len(self.vision.n_tokens)

    @staticmethod
    def concat(parts: Sequence["EncodedItems"]) -> "EncodedItems":
        """The items of ``parts``, in order (the parts must hold the same views)."""
        views = {v: [e for p in parts for e in p.views[v]] for v in parts[0].views}
        return EncodedItems(views, type(parts[0].vision).concat([p.vision for p in parts]))

    def select(self, rows: Sequence[int]) -> "EncodedItems":
        """Items ``rows``, in this order."""
        return EncodedItems({v: [e[i] for i in rows] for v, e in self.views.items()}, self.vision.select(rows))
