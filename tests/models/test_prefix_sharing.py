"""The prefix-shared contrastive forward computes what three separate forwards compute."""

from __future__ import annotations

import pytest
import torch

from l2s_data.models import FAMILIES, POSITIONS, ContrastiveItem
from l2s_data.models.prefix import PrefixModel, shared_prefix_lengths

PAIR_POSITIONS = list(POSITIONS)
INPUT_POSITIONS = ["prompt_last", "user_last", "sequence_last", "sequence_last-1"]


def _both(adapter, items, **kw):
    args = dict(input_layers=list(range(adapter.num_layers)), input_positions=INPUT_POSITIONS,
                pair_layers=list(range(adapter.num_layers)), pair_positions=PAIR_POSITIONS)
    args.update(kw)
    shared = adapter.capture_contrastive(items, prefix_sharing=True, **args)
    separate = adapter.capture_contrastive(items, prefix_sharing=False, **args)
    return shared, separate


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_shared_equals_separate_forwards_on_a_left_padded_mix_of_categories_01_10_12(
    family, tiny_adapter, safety_items
):
    adapter = tiny_adapter(family)
    encs = adapter.encode_contrastive(safety_items, ["input", "pos", "neg"]).views
    prefix = shared_prefix_lengths(encs, ["input", "pos", "neg"])
    # The prefix really is shared (image and query), and rows differ in length (left padding).
    assert all(p > e.image_span[1] for p, e in zip(prefix, encs["input"], strict=True))
    assert len({len(e) for e in encs["pos"]}) > 1 and len(set(prefix)) > 1
    shared, separate = _both(adapter, safety_items)
    assert shared.keys() == separate.keys()
    for key, value in separate.items():
        assert shared[key].shape == (len(safety_items), adapter.hidden_size), key
        torch.testing.assert_close(shared[key], value, atol=2e-5, rtol=1e-4, msg=f"{family} {key}")


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_shared_p2s_is_pos_minus_neg_in_float32(family, tiny_adapter, safety_items):
    adapter = tiny_adapter(family)
    out = adapter.capture_contrastive(
        safety_items, input_layers=[], input_positions=[], pair_layers=[1, 2],
        pair_positions=["completion_last", "completion_mean"], prefix_sharing=True,
    )  # fmt: skip
    assert {k[0] for k in out} == {"pos", "neg", "p2s"}
    for (view, position, layer), value in out.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        if view == "p2s":
            assert torch.equal(value, out[("pos", position, layer)] - out[("neg", position, layer)])


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_shared_handles_an_empty_suffix_where_input_is_a_prefix_of_pos(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    items = [
        ContrastiveItem(make_image(1, (64, 64)), "Is there a cat in the image?", "", "Yes, the image", "No, the image"),
        ContrastiveItem(make_image(2, (90, 60)), "Is there a car?", "", "No", "Yes"),
    ]
    shared, separate = _both(adapter, items)
    for key, value in separate.items():
        torch.testing.assert_close(shared[key], value, atol=2e-5, rtol=1e-4, msg=f"{family} {key}")


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_shared_equals_separate_forwards_with_sdpa_attention(family, tiny_checkpoint, safety_items):
    from l2s_data.models import load_adapter

    adapter = load_adapter(tiny_checkpoint(family), attn_implementation="sdpa")
    shared, separate = _both(adapter, safety_items[:4], input_layers=[0, 3], pair_layers=[1, 3])
    for key, value in separate.items():
        torch.testing.assert_close(shared[key], value, atol=2e-5, rtol=1e-4, msg=f"{family} {key}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("split_padding", [0.0, 1.0], ids=["input-in-its-own-call", "one-joint-call"])
def test_both_continuation_groupings_equal_separate_forwards(family, split_padding, tiny_adapter, safety_items,
                                                               monkeypatch):
    import l2s_data.models.prefix as prefix_module

    monkeypatch.setattr(prefix_module, "SPLIT_PADDING", split_padding)
    adapter = tiny_adapter(family)
    encs = adapter.encode_contrastive(safety_items, ["input", "pos", "neg"]).views
    groups = prefix_module.continuation_groups(encs, ["input", "pos", "neg"],
                                               shared_prefix_lengths(encs, ["input", "pos", "neg"]))
    assert groups == ([["input"], ["pos", "neg"]] if split_padding == 0.0 else [["input", "pos", "neg"]])
    shared, separate = _both(adapter, safety_items)
    for key, value in separate.items():
        torch.testing.assert_close(shared[key], value, atol=2e-5, rtol=1e-4, msg=f"{family} {key}")


def test_the_adapter_has_everything_prefix_sharing_takes_from_it(tiny_adapter):
    adapter = tiny_adapter("llava")
    members = [m for m in PrefixModel.__annotations__] + [
        m for m, v in vars(PrefixModel).items() if callable(v) and not m.startswith("_")]
    assert {"family", "model", "layers", "pad_token_id", "forward", "run_sequence"} <= set(members)
    missing = [m for m in members if not hasattr(adapter, m)]
    assert not missing, f"ModelAdapter lacks {missing} of PrefixModel"
