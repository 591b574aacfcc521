"""Steering and generation, the part of :class:`~l2s_data.models.ModelAdapter` that runs after
capture: a hook that adds ``alpha * v`` to one decoder layer, and batched, left-padded
generation (greedy, or sampled with a seed) of token ids and texts.

Shapes: B items, D hidden size; steering vectors are ``[B, D]`` or ``[D]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from l2s_data.errors import InputError, PromptTooLongError
from l2s_data.models import families
from l2s_data.models.encoding import Encoded, unpack_encoded
from l2s_data.models.gather import layer_output
from l2s_data.models.types import ChatInput

__all__ = ["SteeredGeneration"]


class SteeredGeneration:
    """Steering and generation over a loaded model; :class:`~l2s_data.models.ModelAdapter`
    provides the attributes and the encoding and checking methods this part uses."""

    model: Any
    processor: Any
    family: str
    device: torch.device
    dtype: torch.dtype
    hidden_size: int
    max_context: int
    layers: Sequence[torch.nn.Module]
    pad_token_id: int
    image_token_id: int | None

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        raise NotImplementedError

    def encode_items(self, items: Sequence[ChatInput]) -> tuple[list[Encoded], families.Vision]:
        raise NotImplementedError

    def pad_left(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @contextlib.contextmanager
    def steering(self, layer: int, vectors: torch.Tensor, alpha: float) -> Iterator[None]:
        """Add ``alpha * v`` to decoder layer ``layer``'s output at every position (prompt and
        every generated token) while the block runs.

        ``vectors``: [B, D] (row i of the batch gets ``vectors[i]``) or [D] (every row).
        """
        (layer,) = self.check_layers([layer])
        v = torch.as_tensor(vectors)
        if v.ndim not in (1, 2) or v.shape[-1] != self.hidden_size:
            raise InputError(f"steering vectors have shape {tuple(v.shape)}; expected [B, {self.hidden_size}] "
                             f"or [{self.hidden_size}].")
        delta = (float(alpha) * v.to(self.device, torch.float32)).to(self.dtype)
        delta = delta[:, None, :] if delta.ndim == 2 else delta

        def hook(_module, _args, output):
            hidden = layer_output(output)
            if delta.ndim == 3 and delta.shape[0] != hidden.shape[0]:
                raise InputError(f"steering vectors have {delta.shape[0]} rows but the batch has "
                                 f"{hidden.shape[0]}; pass one vector per item, or a single [D] vector.")
            steered = hidden + delta
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        handle = self.layers[layer].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def generation_inputs(self, items: Sequence[ChatInput], *,
                          encoded: tuple[Sequence[Encoded], families.Vision] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded ``generate()`` kwargs for ``items``.

        An item without a completion is prompted with the generation prompt; one with a
        completion is prompted with the open-ended completion (``continue_final_message``:
        no end of turn), followed by its ``continuation`` ids when it has some.
        ``encoded``: :meth:`encode_items` of items without completions, when the caller has it.
        """
        if encoded is not None:
            if any(it.completion is not None for it in items):
                raise InputError("pre-encoded generation inputs are for items without a completion; pass "
                                 "completions unencoded (they are encoded open-ended here)")
            encs, vision = unpack_encoded(encoded, len(items))
        else:
            items = [it if it.completion is None or it.continuation is not None else replace(it, continuation=())
                     for it in items]
            encs, vision = self.encode_items(items)
        for i, e in enumerate(encs):
            if len(e) > self.max_context:
                raise PromptTooLongError(f"item {i}: {len(e)} tokens exceed the model's context of "
                                         f"{self.max_context}; shorten the query.")
        ids, mask = self.pad_left([e.ids for e in encs])
        kwargs = {"input_ids": ids, "attention_mask": mask, **vision.take(list(range(len(items))))}
        if self.family != "llava" and families.takes_mm_token_types(self.model.forward):
            kwargs["mm_token_type_ids"] = (ids == self.image_token_id).int()
        return {k: v.to(self.device, dtype=self.dtype if v.is_floating_point() else v.dtype)
                for k, v in kwargs.items()}

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The ids that end generation (the generation config's, else the tokenizer's)."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return frozenset([eos] if isinstance(eos, int) else eos)

    def placeholder_token_ids(self) -> list[int]:
        """Ids that stand for images or videos: never sampled, since a placeholder without
        pixels breaks the forward (a real model gives them vanishing probability anyway)."""
        cfg = self.model.config
        names = ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                 "vision_end_token_id")
        return sorted({int(v) for n in names if (v := getattr(cfg, n, None)) is not None})

    @torch.inference_mode()
    def generate_ids(self, items: Sequence[ChatInput], *, max_new_tokens: int, do_sample: bool = False,
                     seed: int | None = None, include_last: bool = True, temperature: float | None = None,
                     encoded: tuple[Sequence[Encoded], families.Vision] | None = None,
                     on_step: Callable[[list[int]], None] | None = None) -> list[tuple[int, ...]]:
        """Greedy (or sampled, seeded) continuations of ``items``, as token ids.

        Row i holds the ids generated for ``items[i]`` up to its end of sequence; the end of
        sequence itself and the padding after it are dropped. ``include_last=False`` also
        drops the last id of a row that stopped at ``max_new_tokens`` (the reference feeds
        back every generated token but the last one produced: the end of sequence, or the
        N-th). A completion is continued (see :meth:`generation_inputs`). ``temperature``
        divides the logits when sampling (None: the checkpoint's generation config). ``encoded``:
        see :meth:`generation_inputs`. ``on_step``: called after every decoding step with the
        token each row took (a row past its end of sequence takes padding), as it is generated.
        """
        if not items:
            return []
        kwargs = self.generation_inputs(items, encoded=encoded)
        width = kwargs["input_ids"].shape[1]
        if do_sample and temperature is not None:
            kwargs["temperature"] = float(temperature)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            streamer = None if on_step is None else _Steps(on_step)
            out = self.model.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                      pad_token_id=self.pad_token_id, use_cache=True,
                                      suppress_tokens=self.placeholder_token_ids(), streamer=streamer)
        eos = self.eos_token_ids
        rows = []
        for row in out[:, width:].tolist():
            stop = next((k for k, t in enumerate(row) if t in eos), None)
            if stop is not None:
                rows.append(tuple(row[:stop]))
            else:
                rows.append(tuple(row if include_last else row[:-1]))
        return rows

    def generate(self, items: Sequence[ChatInput], *, max_new_tokens: int, do_sample: bool = False,
                 seed: int | None = None, encoded: tuple[Sequence[Encoded], families.Vision] | None = None) -> list[str]:
        """:meth:`generate_ids`, decoded without special tokens (for display only). ``encoded``:
        :meth:`encode_items` of ``items``, when the caller generates from them more than once."""
        ids = self.generate_ids(items, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed, encoded=encoded)
        return self.processor.tokenizer.batch_decode([list(r) for r in ids], skip_special_tokens=True)


class _Steps(BaseStreamer):
    """Hands each decoding step's tokens (one per row) to a callback; ``generate`` first puts
    the prompt, which is not a step."""

    def __init__(self, on_step: Callable[[list[int]], None]):
        self.on_step = on_step
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_step([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass
