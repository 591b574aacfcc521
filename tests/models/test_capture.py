"""Capture reads exactly the decoder-layer outputs at the named positions, for every family."""

from __future__ import annotations

import pytest
import torch

from l2s_data.models import FAMILIES, POSITIONS, ChatInput, ContrastiveItem
from l2s_data.models.encoding import messages_for, render

ITEMS = [
    dict(query="What is shown in the image?", suffix=" Answer briefly.", completion="A small red box"),
    dict(query="Is there a dog?", suffix="", completion="No"),
    dict(query="Describe the scene in one long and detailed sentence, please.", suffix=" Be safe.",
         completion="It is a photo of noise", system="You are careful."),
]


def _items(make_image):
    sizes = [(64, 48), (120, 90), (56, 100)]
    return [ChatInput(make_image(i, sizes[i]), **kw) for i, kw in enumerate(ITEMS)]


def _expected_indices(adapter, item):
    """Token indices of each position, derived independently through the processor's __call__."""
    proc = adapter.processor

    def n_tokens(text):
        return proc(text=[text], images=[item.image], return_tensors="pt")["input_ids"].shape[1]

    user = messages_for(item, with_completion=False)
    full_len = n_tokens(render(proc, messages_for(item)))
    prompt_len = n_tokens(render(proc, user, add_generation_prompt=True))
    completion_len = n_tokens(render(proc, messages_for(item), continue_final_message=True))
    return {
        "prompt_last": [prompt_len - 1],
        "completion_last": [completion_len - 1],
        "completion_mean": list(range(prompt_len, completion_len)),
        "sequence_last": [full_len - 1],
        "sequence_last-1": [full_len - 2],
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_encoded_ids_equal_the_processors_own_call(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    for item in _items(make_image):
        encs, _ = adapter.encode_items([item])
        text = render(adapter.processor, messages_for(item))
        ids = adapter.processor(text=[text], images=[item.image], return_tensors="pt")["input_ids"][0]
        assert list(encs[0].ids) == ids.tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_output_hidden_states_at_every_layer_but_the_last_and_every_position(
    family, tiny_adapter, make_image
):
    adapter = tiny_adapter(family)
    layers = list(range(adapter.num_layers))
    for item in _items(make_image):
        got = adapter.capture([item], layers=layers, positions=POSITIONS)
        text = render(adapter.processor, messages_for(item))
        inputs = adapter.processor(text=[text], images=[item.image], return_tensors="pt")
        with torch.no_grad():
            hs = adapter.model(**inputs, output_hidden_states=True).hidden_states
        # user_last: the last token of the user turn rendered alone (its own sequence)
        user_text = render(adapter.processor, messages_for(item, with_completion=False))
        with torch.no_grad():
            user_hs = adapter.model(**adapter.processor(text=[user_text], images=[item.image], return_tensors="pt"),
                                    output_hidden_states=True).hidden_states
        expected = {p: (hs, idx) for p, idx in _expected_indices(adapter, item).items()}
        expected["user_last"] = (user_hs, [user_hs[0].shape[1] - 1])
        assert set(expected) == set(POSITIONS)
        for position, (states, idx) in expected.items():
            assert idx, position
            for layer in layers[:-1]:
                want = states[layer + 1][0, idx].mean(0)
                torch.testing.assert_close(got[(position, layer)][0], want, atol=1e-5, rtol=1e-5)
            assert got[(position, layers[-1])].shape == (1, adapter.hidden_size)
            assert got[(position, layers[-1])].dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padded_capture_equals_capture_one_sample_at_a_time(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    items = _items(make_image)
    layers = list(range(adapter.num_layers))
    batched = adapter.capture(items, layers=layers, positions=POSITIONS)
    lengths = {len(e) for e in adapter.encode_items(items)[0]}
    assert len(lengths) == len(items), "the batch must mix lengths to exercise left padding"
    for i, item in enumerate(items):
        single = adapter.capture([item], layers=layers, positions=POSITIONS)
        for key, value in single.items():
            assert batched[key].shape == (len(items), adapter.hidden_size)
            torch.testing.assert_close(batched[key][i], value[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_contrastive_views_equal_captures_of_each_view_and_p2s_is_pos_minus_neg(
    family, tiny_adapter, safety_items
):
    adapter = tiny_adapter(family)
    items = safety_items[:3]
    out = adapter.capture_contrastive(
        items, input_layers=[1, 3], input_positions=["prompt_last", "user_last"],
        pair_layers=[0, 2], pair_positions=["completion_last", "completion_mean", "sequence_last"],
        prefix_sharing=False,
    )  # fmt: skip
    assert {k[0] for k in out} == {"input", "pos", "neg", "p2s"}
    views = [it.views() for it in items]
    inp = adapter.capture([v["input"] for v in views], layers=[1, 3], positions=["prompt_last", "user_last"])
    pos = adapter.capture([v["pos"] for v in views], layers=[0, 2], positions=["completion_last", "completion_mean",
                                                                              "sequence_last"])
    neg = adapter.capture([v["neg"] for v in views], layers=[0, 2], positions=["completion_last", "completion_mean",
                                                                              "sequence_last"])
    for (p, layer), v in inp.items():
        torch.testing.assert_close(out[("input", p, layer)], v, atol=1e-5, rtol=1e-5)
    for (p, layer), v in pos.items():
        torch.testing.assert_close(out[("pos", p, layer)], v, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[("neg", p, layer)], neg[(p, layer)], atol=1e-5, rtol=1e-5)
        assert torch.equal(out[("p2s", p, layer)], out[("pos", p, layer)] - out[("neg", p, layer)])
        assert out[("p2s", p, layer)].abs().max() > 0


def test_contrastive_item_views_follow_the_design_table(make_image):
    item = ContrastiveItem(make_image(0), "Q?", " S.", "Yes", "No")
    views = item.views()
    assert views["input"] == ChatInput(item.image, "Q?")
    assert views["pos"] == ChatInput(item.image, "Q?", " S.", "Yes")
    assert views["neg"] == ChatInput(item.image, "Q?", " S.", "No")


@pytest.mark.parametrize("family", FAMILIES)
def test_stopping_after_the_deepest_requested_layer_changes_nothing(family, tiny_adapter, safety_items):
    adapter = tiny_adapter(family)
    kw = dict(input_layers=[0], input_positions=["prompt_last"], pair_layers=[1],
              pair_positions=["completion_mean", "sequence_last"])
    early = {ps: adapter.capture_contrastive(safety_items[:3], prefix_sharing=ps, **kw) for ps in (True, False)}
    adapter.stop_early = False
    try:
        full = {ps: adapter.capture_contrastive(safety_items[:3], prefix_sharing=ps, **kw) for ps in (True, False)}
    finally:
        adapter.stop_early = True
    for ps in (True, False):
        assert early[ps].keys() == full[ps].keys()
        for key, value in full[ps].items():
            torch.testing.assert_close(early[ps][key], value, atol=1e-6, rtol=1e-6)
