"""With bfloat16 compute, p2s is the float32 difference of the bf16 hidden states, taken
before any down-cast (not the difference of down-cast values)."""

from __future__ import annotations

import pytest
import torch

from l2s_data.models import ContrastiveItem, load_adapter
from l2s_data.models.encoding import messages_for, render

LAYER = 2


@pytest.fixture(scope="module")
def bf16(tiny_checkpoint):
    return load_adapter(tiny_checkpoint("llava"), dtype="bfloat16")


def _hidden(adapter, chat):
    """Decoder layer LAYER's bf16 output [L, D] of one unpadded sequence, via output_hidden_states."""
    text = render(adapter.processor, messages_for(chat))
    inputs = adapter.processor(text=[text], images=[chat.image], return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        return adapter.model(**inputs, output_hidden_states=True).hidden_states[LAYER + 1][0]


def test_bf16_p2s_is_the_float32_difference_of_bf16_hidden_states(bf16, make_image):
    item = ContrastiveItem(make_image(5, (70, 50)), "Is this a safe request?", " Is the user request safe or harmful?",
                           "Harmful", "Safe")
    out = bf16.capture_contrastive([item], input_layers=[], input_positions=[], pair_layers=[LAYER],
                                   pair_positions=["sequence_last", "completion_mean"], prefix_sharing=False)
    views = item.views()
    hp, hn = _hidden(bf16, views["pos"]), _hidden(bf16, views["neg"])
    assert hp.dtype == torch.bfloat16
    # sequence_last: one bf16 token per view, and p2s is their exact float32 difference.
    p2s = out[("p2s", "sequence_last", LAYER)][0]
    torch.testing.assert_close(p2s, hp[-1].float() - hn[-1].float(), atol=0, rtol=0)
    # completion_mean: means in float32, then the difference; down-casting the two means to
    # bf16 first (what storing pos and neg as bf16 and subtracting later would give) is worse.
    (pos_enc,), _ = bf16.encode_items([views["pos"]])
    (neg_enc,), _ = bf16.encode_items([views["neg"]])
    want = hp[slice(*pos_enc.completion)].float().mean(0) - hn[slice(*neg_enc.completion)].float().mean(0)
    mean_p2s = out[("p2s", "completion_mean", LAYER)][0]
    torch.testing.assert_close(mean_p2s, want, atol=1e-6, rtol=1e-5)
    pos, neg = out[("pos", "completion_mean", LAYER)][0], out[("neg", "completion_mean", LAYER)][0]
    downcast = pos.bfloat16().float() - neg.bfloat16().float()
    assert (downcast - want).abs().max() > 10 * (mean_p2s - want).abs().max()


def test_bf16_prefix_shared_agrees_with_separate_forwards_within_bf16_tolerance(bf16, safety_items):
    kw = dict(input_layers=[LAYER], input_positions=["prompt_last"], pair_layers=[LAYER],
              pair_positions=["completion_last", "sequence_last"])
    shared = bf16.capture_contrastive(safety_items, prefix_sharing=True, **kw)
    separate = bf16.capture_contrastive(safety_items, prefix_sharing=False, **kw)
    for key, value in separate.items():
        if key[0] == "p2s":
            continue  # a difference of close vectors: its relative error is not bounded by bf16's
        torch.testing.assert_close(shared[key], value, atol=0.1, rtol=0.05, msg=str(key))
    for key, value in shared.items():
        if key[0] == "p2s":
            assert torch.equal(value, shared[("pos", *key[1:])] - shared[("neg", *key[1:])])
