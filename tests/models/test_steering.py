"""Steering adds alpha*v at one layer, at every prompt position and every generated token."""

from __future__ import annotations

import pytest
import torch

from l2s_data.models import FAMILIES, POSITIONS, ChatInput

LAYER = 1


def _items(make_image):
    return [
        ChatInput(make_image(3, (64, 48)), "What is in this picture?"),
        ChatInput(make_image(4, (100, 120)), "Describe it.", " Be brief.", system="Answer in English."),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_hook_shifts_the_layer_output_by_exactly_alpha_v_per_row(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    items = _items(make_image)
    vectors = torch.randn(len(items), adapter.hidden_size)
    positions = ["user_last", "prompt_last", "sequence_last-1"]
    plain = adapter.capture(items, layers=[LAYER, LAYER + 1], positions=positions)
    with adapter.steering(LAYER, vectors, alpha=2.5):
        steered = adapter.capture(items, layers=[LAYER, LAYER + 1], positions=positions)
    for p in positions:
        torch.testing.assert_close(steered[(p, LAYER)] - plain[(p, LAYER)], 2.5 * vectors, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(steered[(p, LAYER + 1)], plain[(p, LAYER + 1)], atol=1e-3)
    # A single [D] vector applies to every row; leaving the block removes the hook.
    with adapter.steering(LAYER, vectors[0], alpha=-1.0):
        one = adapter.capture(items, layers=[LAYER], positions=["prompt_last"])
    torch.testing.assert_close(one[("prompt_last", LAYER)] - plain[("prompt_last", LAYER)],
                               -vectors[0].expand(len(items), -1), atol=1e-5, rtol=1e-5)
    again = adapter.capture(items, layers=[LAYER], positions=["prompt_last"])
    assert torch.equal(again[("prompt_last", LAYER)], plain[("prompt_last", LAYER)])


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_reproduces_unsteered_generation_and_nonzero_alpha_changes_the_logits(
    family, tiny_adapter, make_image
):
    adapter = tiny_adapter(family)
    items = _items(make_image)
    vectors = torch.randn(len(items), adapter.hidden_size)
    plain = adapter.generate(items, max_new_tokens=8)
    with adapter.steering(LAYER, vectors, alpha=0.0):
        zero = adapter.generate(items, max_new_tokens=8)
    assert zero == plain
    inputs = adapter.generation_inputs(items)
    with torch.no_grad():
        base = adapter.model(**inputs).logits[:, -1]
        with adapter.steering(LAYER, vectors, alpha=4.0):
            moved = adapter.model(**inputs).logits[:, -1]
    assert (moved - base).abs().max() > 1e-3  # the hook really ran


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_equals_generation_one_item_at_a_time(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    items = _items(make_image)
    batched = adapter.generate(items, max_new_tokens=6)
    assert batched == [adapter.generate([it], max_new_tokens=6)[0] for it in items]
    sampled = adapter.generate(items, max_new_tokens=6, do_sample=True, seed=7)
    assert sampled == adapter.generate(items, max_new_tokens=6, do_sample=True, seed=7)


@pytest.mark.parametrize("family", FAMILIES)
def test_steered_generation_with_kv_cache_equals_step_by_step_recompute_without_cache(
    family, tiny_adapter, make_image
):
    adapter = tiny_adapter(family)
    items = _items(make_image)
    vectors = torch.randn(len(items), adapter.hidden_size)
    steps = 5
    inputs = adapter.generation_inputs(items)
    width = inputs["input_ids"].shape[1]
    with torch.no_grad(), adapter.steering(LAYER, vectors, alpha=3.0):
        out = adapter.model.generate(**inputs, max_new_tokens=steps, do_sample=False, use_cache=True,
                                     min_new_tokens=steps, pad_token_id=adapter.pad_token_id,
                                     output_logits=True, return_dict_in_generate=True)
    generated = out.sequences[:, width:]
    assert generated.shape[1] == steps
    for i, item in enumerate(items):
        row = adapter.generation_inputs([item])
        ids = row["input_ids"]
        for t in range(steps):
            step = dict(row, input_ids=ids, attention_mask=torch.ones_like(ids))
            if "mm_token_type_ids" in row:
                step["mm_token_type_ids"] = (ids == adapter.image_token_id).int()
            with torch.no_grad(), adapter.steering(LAYER, vectors[i : i + 1], alpha=3.0):
                logits = adapter.model(**step, use_cache=False).logits[0, -1]
            torch.testing.assert_close(logits, out.logits[t][i], atol=1e-4, rtol=1e-4)
            assert int(logits.argmax()) == int(generated[i, t])
            ids = torch.cat([ids, generated[i : i + 1, t : t + 1]], dim=1)


def test_positions_constant_lists_the_design_positions():
    assert POSITIONS == ("prompt_last", "user_last", "completion_last", "completion_mean", "sequence_last",
                         "sequence_last-1")
