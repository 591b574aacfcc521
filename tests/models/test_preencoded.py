"""Inputs encoded once and handed back (what a server does for a batch): capture and generation
give what they give when they encode the items themselves, and a mismatch is refused."""

from __future__ import annotations

import pytest
import torch

from l2s_data.errors import InputError
from l2s_data.models import FAMILIES, ChatInput


def _items(make_image):
    return [ChatInput(make_image(5, (64, 48)), "What is in this picture?"),
            ChatInput(make_image(6, (90, 70)), "Describe the scene in a few words, please.")]


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_and_generation_from_encoded_inputs_equal_the_encoding_ones(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    items = _items(make_image)
    encoded = adapter.encode_items(items)
    want = adapter.capture(items, layers=[1, 2], positions=["prompt_last", "user_last"])
    got = adapter.capture(items, layers=[1, 2], positions=["prompt_last", "user_last"], encoded=encoded)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k])
    v = torch.randn(len(items), adapter.hidden_size)
    with adapter.steering(1, v, 3.0):
        plain = adapter.generate_ids(items, max_new_tokens=5)
        pre = adapter.generate_ids(items, max_new_tokens=5, encoded=encoded)
    assert pre == plain


def test_encoded_inputs_of_other_items_are_refused(tiny_adapter, make_image):
    adapter = tiny_adapter("llava")
    items = _items(make_image)
    one = adapter.encode_items(items[:1])
    with pytest.raises(InputError, match="encoded inputs hold 1 sequences"):
        adapter.capture(items, layers=[1], positions=["prompt_last"], encoded=one)
    with pytest.raises(InputError, match="encoded inputs hold 1 sequences"):
        adapter.generate_ids(items, max_new_tokens=2, encoded=one)
    with pytest.raises(InputError, match="without a completion"):
        adapter.generate_ids([ChatInput(items[0].image, "q", completion="a")], max_new_tokens=2, encoded=one)
