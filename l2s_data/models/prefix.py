"""Prefix-shared contrastive forward: the common prefix once, the branches as continuations.

The ``input``, ``pos`` and ``neg`` sequences of an item (and the user turn alone, when
``user_last`` is not a token of them: :func:`~.encoding.plan_sequences`) share their
beginning (chat header, image, most of the query), which is most of every sequence. Per item
i, with sequences v:

1. ``p_i`` = longest common token prefix of the views, capped so that every view keeps at
   least one token of its own (``input`` may be a prefix of ``pos`` when the suffix is empty).
2. One left-padded forward of the prefixes [B, P] with a KV cache (the image tower runs here,
   once per item instead of once per view).
3. The cache is repeated per view (``batch_repeat_interleave``: rows item-major, r = i*V + v)
   and one call runs the branches' remainders as a right-padded continuation [B*V, C]
   attending to the cache; the attention mask is [B*V, P + C]. ``pos`` and ``neg`` always
   share a call; ``input`` (and the user turn) join them, or run first on their own when
   their short remainders would mostly be padding (:func:`continuation_groups`).
4. Positions are gathered from whichever pass holds their token; a mean that straddles the
   boundary is the sum of both passes' contributions (:class:`~.gather.Gather`).

Position ids come from the full sequences, sliced: llava counts from each row's first real
token; qwen takes ``get_rope_index`` of every view's full left-padded batch and slices the
prefix and continuation columns of each row (DESIGN.md 6: without explicit ids a continuation
fails or is off by 1.6e-4). All index work happens on CPU tensors before the forwards.

If an item's common prefix does not cover its image tokens (only possible with a template
that renders text before the image differently per view), the batch falls back to separate
forwards, which compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from transformers import DynamicCache

from l2s_data.models.encoding import Encoded, position_weights
from l2s_data.models.families import Vision
from l2s_data.models.gather import Gather, layer_hooks

__all__ = ["PrefixModel", "run_prefix_shared", "shared_prefix_lengths", "continuation_groups", "SPLIT_PADDING"]

#: Share of padded token slots above which ``input`` gets its own continuation call.
SPLIT_PADDING = 0.2


def _lcp(seqs: list[tuple[int, ...]]) -> int:
    """Length of the longest common prefix of ``seqs`` (one vectorised comparison)."""
    n = min(len(s) for s in seqs)
    rows = np.array([s[:n] for s in seqs], dtype=np.int64)
    differ = (rows != rows[0]).any(axis=0)
    return int(differ.argmax()) if differ.any() else n


def shared_prefix_lengths(encs: dict[str, list[Encoded]], views: list[str]) -> list[int]:
    """Per item: tokens shared by all ``views``, leaving each view at least one token."""
    out = []
    for i in range(len(encs[views[0]])):
        seqs = [encs[v][i].ids for v in views]
        out.append(min(_lcp(seqs), min(len(s) for s in seqs) - 1))
    return out


def _as3d(pos: torch.Tensor) -> torch.Tensor:
    return pos.unsqueeze(0) if pos.ndim == 2 else pos  # llava [R, L] -> [1, R, L]


def _slice_positions(full: torch.Tensor, start: torch.Tensor, n: torch.Tensor, width: int,
                     right_aligned: bool) -> torch.Tensor:
    """Per row r, columns ``start[r] .. start[r] + n[r]`` of ``full`` [K, R, L] into [K, R, width].

    Left-aligned (continuations, right padding) or right-aligned (prefixes, left padding);
    padding columns get 0 (they are masked).
    """
    cols = torch.arange(width)
    if right_aligned:
        k = cols[None, :] - (width - n)[:, None]          # index within the slice, <0 = padding
    else:
        k = cols[None, :].expand(len(n), width)
    valid = (k >= 0) & (k < n[:, None])
    src = (start[:, None] + k).clamp(0, full.shape[-1] - 1)
    out = torch.gather(full, 2, src.unsqueeze(0).expand(full.shape[0], -1, -1))
    return out * valid.unsqueeze(0)


class PrefixModel(Protocol):
    """What prefix sharing needs of a model adapter (:class:`~l2s_data.models.ModelAdapter`)."""

    family: str
    model: Any                      # the Hugging Face model (its config builds the KV cache)
    layers: Sequence[torch.nn.Module]
    pad_token_id: int

    def pad_left(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def positions_for(self, ids: torch.Tensor, mask: torch.Tensor, vision: Vision | None,
                      images: Sequence[int]) -> torch.Tensor: ...

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, *,
                vision_kwargs: dict | None = None, cache: Any = None, use_cache: bool = False) -> Any: ...

    def run_sequence(self, gather: Gather, encs: Sequence[Encoded], reads: Sequence[tuple[tuple, str]],
                     vision: Vision) -> None: ...


def run_prefix_shared(adapter: PrefixModel, gather: Gather, seqs: dict[str, list[Encoded]], vision: Vision,
                      reads: dict[str, list[tuple[tuple, str]]]) -> None:
    """Run the sequences ``seqs`` (name -> one :class:`Encoded` per item) prefix-shared, reading
    ``reads[name]`` = [(gather key, position)] into result row i of each key."""
    views = list(seqs)
    b = len(seqs[views[0]])
    items = list(range(b))
    prefix = shared_prefix_lengths(seqs, views)
    if any(p < seqs[views[0]][i].image_span[1] for i, p in enumerate(prefix)):
        for v in views:  # see the module docstring: same numbers, separate forwards
            adapter.run_sequence(gather, seqs[v], reads[v], vision)
        return

    p = torch.tensor(prefix)
    width_p = int(p.max())

    # Full-sequence position ids of every view, computed on the CPU ([K, B, L_v]).
    full_pos, full_len = {}, {}
    for v in views:
        ids, mask = adapter.pad_left([e.ids for e in seqs[v]])
        full_pos[v] = _as3d(adapter.positions_for(ids, mask, vision, items))
        full_len[v] = torch.tensor([len(e) for e in seqs[v]])

    def squeeze(pos: torch.Tensor) -> torch.Tensor:
        return pos[0] if adapter.family == "llava" else pos

    # --- prefix pass [B, P] --------------------------------------------------------------
    first = views[0]
    pre_ids, pre_mask = adapter.pad_left([seqs[first][i].ids[: prefix[i]] for i in items])
    start = full_pos[first].shape[-1] - full_len[first]            # first real column per row
    pre_pos = _slice_positions(full_pos[first], start, p, width_p, right_aligned=True)
    pre_entries = {}
    for v in views:
        for key, position in reads[v]:
            src, dst, ws = [], [], []
            for i in items:
                for t, w in position_weights(seqs[v][i], position):
                    if t < prefix[i]:
                        src.append(i * width_p + width_p - prefix[i] + t), dst.append(i), ws.append(w)
            pre_entries[key] = (src, dst, ws)

    cache = DynamicCache(config=adapter.model.config)
    hooks = gather.hooks()
    gather.set_pass(pre_entries)
    with layer_hooks(adapter.layers, hooks):
        adapter.forward(pre_ids, pre_mask, squeeze(pre_pos), vision_kwargs=vision.take(items),
                        cache=cache, use_cache=True)

    # --- continuations: one call per group of views, rows item-major ----------------------
    groups = continuation_groups(seqs, views, prefix)
    for gi, group in enumerate(groups):
        if gi > 0:  # back to the prefix: drop the previous group's tokens and repeated rows
            _truncate(cache, width_p, stride=len(groups[gi - 1]))
        nv = len(group)
        if nv > 1:
            cache.batch_repeat_interleave(nv)
        conts = [seqs[v][i].ids[prefix[i]:] for i in items for v in group]
        width_c = max(len(c) for c in conts)
        cont_ids = torch.full((b * nv, width_c), adapter.pad_token_id, dtype=torch.long)
        cont_mask = torch.zeros((b * nv, width_c), dtype=torch.long)
        for r, c in enumerate(conts):
            cont_ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
            cont_mask[r, : len(c)] = 1
        cont_pos = []
        for v in group:
            start_v = full_pos[v].shape[-1] - full_len[v] + p          # first continuation column
            cont_pos.append(_slice_positions(full_pos[v], start_v, full_len[v] - p, width_c, right_aligned=False))
        # [V, K, B, C] -> [K, B, V, C] -> [K, B*V, C] (item-major rows)
        cont_pos = torch.stack(cont_pos).permute(1, 2, 0, 3).reshape(cont_pos[0].shape[0], b * nv, width_c)
        attn = torch.cat([pre_mask.repeat_interleave(nv, 0), cont_mask], dim=1)
        entries = {}
        for vi, v in enumerate(group):
            for key, position in reads[v]:
                src, dst, ws = [], [], []
                for i in items:
                    for t, w in position_weights(seqs[v][i], position):
                        if t >= prefix[i]:
                            src.append((i * nv + vi) * width_c + t - prefix[i]), dst.append(i), ws.append(w)
                entries[key] = (src, dst, ws)
        gather.set_pass(entries)
        with layer_hooks(adapter.layers, hooks):
            adapter.forward(cont_ids, attn, squeeze(cont_pos), cache=cache, use_cache=True)


def continuation_groups(encs: dict[str, list[Encoded]], views: list[str], prefix: list[int]) -> list[list[str]]:
    """Which sequences share a continuation call.

    ``pos`` and ``neg`` always go together. The others (``input``, and the user turns alone
    when ``user_last`` needs them) join them unless their (short, prompt-only) remainders
    would leave more than ``SPLIT_PADDING`` of the joint call's token slots as padding; then
    they run first in a call of their own on the unrepeated cache, and the cache is cut back
    to the prefix before pos/neg. One more call costs a few milliseconds of launch overhead on
    a GPU; padding costs FLOPs in every layer.
    """
    pair = [v for v in views if v in ("pos", "neg")]
    rest = [v for v in views if v not in pair]
    if not rest or not pair:
        return [list(views)]

    def width(v: str) -> int:
        return max(len(e) - p for e, p in zip(encs[v], prefix, strict=True))

    w_rest, w_pair = max(width(v) for v in rest), max(width(v) for v in pair)
    joint = len(views) * max(w_rest, w_pair)
    split = len(rest) * w_rest + len(pair) * w_pair
    return [rest, pair] if (joint - split) > SPLIT_PADDING * joint else [rest + pair]


def _truncate(cache, length: int, stride: int = 1) -> None:
    """Cut every cache layer back to its first ``length`` positions and every ``stride``-th row
    (undoing a ``batch_repeat_interleave(stride)``). Absolute, so the same on every
    transformers version, and right even for layers a stopped forward never reached."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.numel():
            layer.keys = keys[::stride, ..., :length, :]
            layer.values = layer.values[::stride, ..., :length, :]
