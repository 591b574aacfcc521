"""Prefix-shared contrastive forward: the common prefix once, the three branches as one call.

The ``input``, ``pos`` and ``neg`` sequences of an item share their beginning (chat header,
image, most of the query), which is most of every sequence. Per item i, with views v:

1. ``p_i`` = longest common token prefix of the views, capped so that every view keeps at
   least one token of its own (``input`` may be a prefix of ``pos`` when the suffix is empty).
2. One left-padded forward of the prefixes [B, P] with a KV cache (the image tower runs here,
   once per item instead of once per view).
3. The cache is repeated per view (``batch_repeat_interleave``: rows item-major, r = i*V + v)
   and ONE call runs every branch's remainder as a right-padded continuation [B*V, C]
   attending to the cache; the attention mask is [B*V, P + C].
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

import torch
from transformers import DynamicCache

from l2s_data.models.encoding import Encoded, position_weights
from l2s_data.models.gather import Gather, layer_hooks

__all__ = ["run_prefix_shared", "shared_prefix_lengths"]


def _lcp(seqs: list[tuple[int, ...]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


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


def run_prefix_shared(adapter, gather: Gather, encs: dict[str, list[Encoded]], vision, views: list[str],
                      want: dict[str, tuple[list[int], list[str]]]) -> None:
    b = len(encs[views[0]])
    items = list(range(b))
    prefix = shared_prefix_lengths(encs, views)
    if any(p < encs[views[0]][i].image_span[1] for i, p in enumerate(prefix)):
        for v in views:  # see the module docstring: same numbers, separate forwards
            rows = [(i, i) for i in items]
            adapter._run_rows(gather, {(v, p): rows for p in want[v][1]}, encs[v], items, vision)
        return

    nv = len(views)
    p = torch.tensor(prefix)
    width_p = int(p.max())

    # Full-sequence position ids of every view, computed on the CPU ([K, B, L_v]).
    full_pos, full_len = {}, {}
    for v in views:
        ids, mask = adapter.pad_left([e.ids for e in encs[v]])
        full_pos[v] = _as3d(adapter.positions_for(ids, mask, vision, items))
        full_len[v] = torch.tensor([len(e) for e in encs[v]])

    # --- prefix pass [B, P] --------------------------------------------------------------
    first = views[0]
    pre_ids, pre_mask = adapter.pad_left([encs[first][i].ids[: prefix[i]] for i in items])
    start = full_pos[first].shape[-1] - full_len[first]            # first real column per row
    pre_pos = _slice_positions(full_pos[first], start, p, width_p, right_aligned=True)

    # --- continuation pass [B*V, C], rows item-major --------------------------------------
    conts = [encs[v][i].ids[prefix[i]:] for i in items for v in views]
    width_c = max(len(c) for c in conts)
    cont_ids = torch.full((b * nv, width_c), adapter.pad_token_id, dtype=torch.long)
    cont_mask = torch.zeros((b * nv, width_c), dtype=torch.long)
    for r, c in enumerate(conts):
        cont_ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
        cont_mask[r, : len(c)] = 1
    cont_pos = []
    for v in views:
        start_v = full_pos[v].shape[-1] - full_len[v] + p          # first continuation column
        cont_pos.append(_slice_positions(full_pos[v], start_v, full_len[v] - p, width_c, right_aligned=False))
    # [V, K, B, C] -> [K, B, V, C] -> [K, B*V, C] (item-major rows)
    cont_pos = torch.stack(cont_pos).permute(1, 2, 0, 3).reshape(cont_pos[0].shape[0], b * nv, width_c)
    attn = torch.cat([pre_mask.repeat_interleave(nv, 0), cont_mask], dim=1)

    # --- gather plans: every (key, row) token lands in one of the two passes -------------
    pre_entries, cont_entries = {}, {}
    for vi, v in enumerate(views):
        for position in want[v][1]:
            ps, pd, pw, cs, cd, cw = [], [], [], [], [], []
            for i in items:
                for t, w in position_weights(encs[v][i], position):
                    if t < prefix[i]:
                        ps.append(i * width_p + width_p - prefix[i] + t), pd.append(i), pw.append(w)
                    else:
                        cs.append((i * nv + vi) * width_c + t - prefix[i]), cd.append(i), cw.append(w)
            pre_entries[(v, position)] = (ps, pd, pw)
            cont_entries[(v, position)] = (cs, cd, cw)

    def squeeze(pos: torch.Tensor) -> torch.Tensor:
        return pos[0] if adapter.family == "llava" else pos

    cache = DynamicCache(config=adapter.model.config)
    hooks = gather.hooks()
    gather.set_pass(pre_entries)
    with layer_hooks(adapter.layers, hooks):
        adapter.forward(pre_ids, pre_mask, squeeze(pre_pos), vision_kwargs=vision.take(items),
                        cache=cache, use_cache=True)
    if nv > 1:
        cache.batch_repeat_interleave(nv)
    gather.set_pass(cont_entries)
    with layer_hooks(adapter.layers, hooks):
        adapter.forward(cont_ids, attn, squeeze(cont_pos), cache=cache, use_cache=True)
