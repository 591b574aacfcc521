"""Sampled continuations are carried as the exact generated token ids, never as decoded text."""

from __future__ import annotations

import pytest
import torch

from l2s_data.models import ChatInput, ContrastiveItem

from .conftest import image

FAMILIES = ("llava", "qwen2-vl")
SEEDS = range(64)
NEW = 5


def _items(make_image):
    return [
        ContrastiveItem(make_image(1, (64, 64)), "Is there a dog in the image?", "", "Yes, the image", "No, the image"),
        ContrastiveItem(make_image(2, (90, 60)), "Is there a car?", " Answer briefly.", "Yes", "No"),
    ]


def _unpadded(inputs) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"].cpu(), inputs["attention_mask"].cpu())]


class _SeenIds:
    """Records the token rows every base-model forward receives (padding removed)."""

    def __init__(self, adapter):
        self.calls: list[tuple[list[list[int]], int]] = []
        self.handle = adapter.model.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs):
        ids, mask = kwargs["input_ids"].cpu(), kwargs["attention_mask"].cpu()
        mask = mask[:, -ids.shape[1]:]  # a continuation's mask also spans the cached prefix
        self.calls.append(([row[m.bool()].tolist() for row, m in zip(ids, mask)], ids.shape[0]))

    def sequences(self, b: int, *, shared: bool) -> list[set[tuple[int, ...]]]:
        """Per item, every full sequence a forward saw: with ``shared``, the first (prefix) pass
        joined with each of the item's continuation rows; else every row of every forward."""
        out: list[set[tuple[int, ...]]] = [set() for _ in range(b)]
        calls = self.calls
        prefix = None
        if shared:
            prefix, calls = calls[0][0], calls[1:]
        for rows, n in calls:
            per = n // b
            for r, row in enumerate(rows):
                i = r // per
                out[i].add(tuple((prefix[i] if prefix is not None else []) + row))
        return out

    def close(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def sampled(tiny_adapter):
    """Per family, computed once for both prefix-sharing modes: the items, their prompt ids, and
    for every draw of SEEDS a sampled continuation per item and side (even draws keep the last
    generated id, odd ones drop it). The draws come from one batched, seeded generation per side
    and ``include_last`` setting (the items repeated): what the test checks is that a forward sees
    the given ids, however they were drawn."""
    done: dict[str, tuple] = {}

    def get(family: str):
        if family not in done:
            adapter = tiny_adapter(family)
            items = _items(image)
            b, half = len(items), len(SEEDS) // 2
            chats = {side: [ChatInput(it.image, it.query, it.suffix, getattr(it, side)) for it in items]
                     for side in ("positive", "negative")}
            prompts = {side: _unpadded(adapter.generation_inputs(c)) for side, c in chats.items()}
            drawn = {(side, last): adapter.generate_ids(c * half, max_new_tokens=NEW, do_sample=True, seed=int(last),
                                                        include_last=last)
                     for side, c in chats.items() for last in (True, False)}
            gens = {seed: {side: drawn[(side, seed % 2 == 0)][(seed // 2) * b:(seed // 2 + 1) * b] for side in chats}
                    for seed in SEEDS}
            done[family] = (items, prompts, gens)
        return done[family]

    return get


@pytest.mark.parametrize("prefix_sharing", [True, False], ids=["prefix-shared", "separate"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_pos_neg_forward_sees_the_forced_completion_ids_then_exactly_the_generated_ids(
    family, prefix_sharing, tiny_adapter, sampled
):
    adapter = tiny_adapter(family)
    items, prompts, gens = sampled(family)
    lengths = {len(g) for seed in SEEDS for rows in gens[seed].values() for g in rows}
    # Every draw's pair in one capture (items of all seeds side by side, padded together).
    extended = [ContrastiveItem(it.image, it.query, it.suffix, it.positive, it.negative,
                                positive_continuation=gens[seed]["positive"][i],
                                negative_continuation=gens[seed]["negative"][i])
                for seed in SEEDS for i, it in enumerate(items)]
    seen = _SeenIds(adapter)
    try:
        out = adapter.capture_contrastive(extended, input_layers=[], input_positions=[], pair_layers=[1],
                                          pair_positions=["completion_mean"], prefix_sharing=prefix_sharing)
    finally:
        seen.close()
    assert out[("pos", "completion_mean", 1)].shape[0] == len(extended)
    got = seen.sequences(len(extended), shared=prefix_sharing)
    for k, seed in enumerate(SEEDS):
        for i in range(len(items)):
            for side in ("positive", "negative"):
                want = tuple(prompts[side][i]) + gens[seed][side][i]
                assert want in got[k * len(items) + i], (seed, i, side)
    assert {NEW - 1, NEW} <= lengths  # both include_last settings ran


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_ids_are_the_raw_generated_ids_cut_at_the_end_of_sequence(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    chats = [ChatInput(make_image(3), "Describe the image.", "", "The image")]
    inputs = adapter.generation_inputs(chats)
    width = inputs["input_ids"].shape[1]

    def raw(seed: int) -> list[int]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = adapter.model.generate(**inputs, max_new_tokens=8, do_sample=True, use_cache=True,
                                         pad_token_id=adapter.pad_token_id,
                                         suppress_tokens=adapter.placeholder_token_ids())
        return out[0, width:].tolist()

    first = raw(11)
    assert len(first) == 8 and not set(first) & adapter.eos_token_ids  # ran to max_new_tokens
    assert adapter.generate_ids(chats, max_new_tokens=8, do_sample=True, seed=11) == [tuple(first)]
    assert adapter.generate_ids(chats, max_new_tokens=8, do_sample=True, seed=11, include_last=False) == [
        tuple(first[:-1])]
    # Make the 4th sampled token an end of sequence: generation stops there, and it is dropped
    # whatever include_last says (it is never fed back).
    config = adapter.model.generation_config
    old = config.eos_token_id
    config.eos_token_id = sorted(adapter.eos_token_ids | {first[3]})
    try:
        stopped = raw(11)
        cut = stopped.index(first[3])
        for include_last in (True, False):
            assert adapter.generate_ids(chats, max_new_tokens=8, do_sample=True, seed=11,
                                        include_last=include_last) == [tuple(stopped[:cut])]
    finally:
        config.eos_token_id = old


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_never_samples_an_image_placeholder(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    chats = [ChatInput(make_image(4), "What is this?", "", "It is")] * 4
    banned = set(adapter.placeholder_token_ids())
    assert adapter.image_token_id in banned
    for seed in range(8):
        for row in adapter.generate_ids(chats, max_new_tokens=16, do_sample=True, seed=seed):
            assert not banned & set(row)
