"""Chat formatting and tokenization with the token positions of DESIGN.md section 1.

A :class:`ChatInput` is rendered by the processor's own chat template (user turn: image first,
then ``query + suffix``; then either the generation prompt or the teacher-forced completion),
tokenized once with character offsets, and its image placeholder is expanded to the number of
image tokens the vision tower produces (what the processor's ``__call__`` does; a test checks
the ids are equal). Named positions come from character boundaries of partial renderings:

- ``user_last``: last token of the user turn (render without generation prompt);
- ``prompt_last``: last token of the generation prompt (render with it);
- ``completion_last`` / ``completion_mean``: the completion's tokens, end-of-turn excluded
  (render with ``continue_final_message=True``);
- ``sequence_last`` / ``sequence_last-1``: the last two tokens of the whole sequence.

A boundary at character ``c`` maps to the last token that starts before ``c`` after trailing
spaces are dropped, so a token like "▁ASSISTANT" that begins with the separating space is not
counted in the user turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2s_data.errors import InputError, PositionError
from l2s_data.models.types import POSITIONS, ChatInput

__all__ = ["Encoded", "messages_for", "render", "encode", "position_weights"]


@dataclass(frozen=True)
class Encoded:
    """One tokenized sequence. Token indices are 0-based in the unpadded sequence."""

    ids: tuple[int, ...]                 # [L] with the image placeholder expanded
    image_span: tuple[int, int]          # [start, end) of the image tokens
    user_last: int
    prompt_last: int
    completion: tuple[int, int] | None   # [start, end) of the completion tokens
    text: str                            # the rendered text (image placeholder not expanded)

    def __len__(self) -> int:
        return len(self.ids)


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


def render(processor, messages: list[dict], **kwargs) -> str:
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


def _last_token_before(starts: list[int], text: str, end: int) -> int:
    end = len(text[:end].rstrip(" "))
    # starts are sorted; the BOS token (0, 0) counts as starting before any positive end.
    j = max((k for k, s in enumerate(starts) if s < end), default=0)
    return j


def encode(processor, item: ChatInput, n_image_tokens: int, image_token_id: int) -> Encoded:
    """Render and tokenize ``item``; ``n_image_tokens`` is what its image expands to."""
    user_msgs = messages_for(item, with_completion=False)
    prompt_text = render(processor, user_msgs, add_generation_prompt=True)
    user_text = render(processor, user_msgs, add_generation_prompt=False)
    if item.completion is None:
        full = prompt_text
        completion_end = None
    else:
        msgs = messages_for(item)
        full = render(processor, msgs)
        completion_end = len(render(processor, msgs, continue_final_message=True))
    for name, part in (("user turn", user_text), ("generation prompt", prompt_text)):
        if not full.startswith(part[: len(part.rstrip(" "))]):
            raise InputError(
                f"the chat template renders the {name} {part[-40:]!r} differently inside the full "
                f"sequence {full[-80:]!r}; expected each turn to be a prefix of the conversation. "
                "Use a template that renders turns independently of what follows."
            )
    enc = processor.tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    starts = [s for s, _ in enc["offset_mapping"]]
    where = [k for k, t in enumerate(ids) if t == image_token_id]
    if len(where) != 1:
        raise InputError(
            f"expected exactly one image placeholder (token id {image_token_id}) in the rendered "
            f"sequence, found {len(where)}: {full[:120]!r}. Put the image in the user turn only "
            "and keep image tokens out of the query text."
        )
    img = where[0]
    shift = n_image_tokens - 1

    def expanded(j: int) -> int:
        return j if j < img else j + shift

    user_last = expanded(_last_token_before(starts, full, len(user_text)))
    prompt_last = expanded(_last_token_before(starts, full, len(prompt_text)))
    completion = None
    if completion_end is not None:
        first = next((k for k, s in enumerate(starts) if s >= len(prompt_text)), len(ids))
        last = _last_token_before(starts, full, completion_end)
        if last >= first:
            completion = (expanded(first), expanded(last) + 1)
    ids = ids[:img] + [image_token_id] * n_image_tokens + ids[img + 1 :]
    return Encoded(
        ids=tuple(ids),
        image_span=(img, img + n_image_tokens),
        user_last=user_last,
        prompt_last=prompt_last,
        completion=completion,
        text=full,
    )


def position_weights(enc: Encoded, position: str) -> list[tuple[int, float]]:
    """Token indices (unpadded) and weights whose weighted sum is ``position``'s vector."""
    n = len(enc.ids)
    if position == "prompt_last":
        return [(enc.prompt_last, 1.0)]
    if position == "user_last":
        return [(enc.user_last, 1.0)]
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
