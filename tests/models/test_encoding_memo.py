"""Rendering and tokenizing are remembered per processor: a text seen again is neither
rendered nor tokenized again, and what comes back is what a fresh encoding gives."""

from __future__ import annotations

import PIL.Image
import pytest

from l2s_data.models import encoding
from l2s_data.models.types import ChatInput


class Counting:
    """Counts the processor's template renders and tokenizer calls (the real ones run)."""

    def __init__(self, monkeypatch, processor):
        self.renders = self.tokenizations = 0
        render, tokenize = processor.apply_chat_template, processor.tokenizer.__call__

        def counted_render(*a, **k):
            self.renders += 1
            return render(*a, **k)

        def counted_tokenize(*a, **k):
            self.tokenizations += 1
            return tokenize(*a, **k)

        monkeypatch.setattr(processor, "apply_chat_template", counted_render)
        monkeypatch.setattr(type(processor.tokenizer), "__call__", lambda self, *a, **k: counted_tokenize(*a, **k))


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_a_text_seen_again_is_not_rendered_or_tokenized_again_and_encodes_the_same(family, tiny_adapter,
                                                                                  monkeypatch):
    adapter = tiny_adapter(family)
    img = PIL.Image.new("RGB", (64, 48))
    n = adapter.encode_items([ChatInput(img, "x")])[1].n_tokens[0]
    item = ChatInput(img, "Is there a red square in the image, memo test?", completion="Yes", suffix=" Answer.")
    counting = Counting(monkeypatch, adapter.processor)
    first = adapter.encode_chat(item, n)
    renders, tokenizations = counting.renders, counting.tokenizations
    assert renders >= 3 and tokenizations == 2
    again = adapter.encode_chat(item, n)
    assert again == first
    assert (counting.renders, counting.tokenizations) == (renders, tokenizations)
    # the negative of the same pair shares the prompt and the user turn: only its own text is new
    neg = adapter.encode_chat(ChatInput(img, item.query, completion="No", suffix=item.suffix), n)
    assert neg.user == first.user and neg.ids != first.ids
    assert counting.renders - renders == 2 and counting.tokenizations - tokenizations == 1


def test_a_changed_chat_template_is_rendered_afresh(tiny_adapter, monkeypatch):
    processor = tiny_adapter("llava").processor
    msgs = encoding.messages_for(ChatInput(PIL.Image.new("RGB", (8, 8)), "Template change test?"))
    before = encoding.render(processor, msgs, add_generation_prompt=True)
    monkeypatch.setattr(processor, "chat_template", processor.chat_template.replace("ASSISTANT:", "BOT:"))
    after = encoding.render(processor, msgs, add_generation_prompt=True)
    assert before.endswith("ASSISTANT:") and after.endswith("BOT:")


def test_the_memo_is_bounded(tiny_adapter, monkeypatch):
    processor = tiny_adapter("llava").processor
    monkeypatch.setattr(encoding, "_MEMO_SIZE", 8)
    monkeypatch.delitem(encoding._MEMOS, processor, raising=False)  # noqa: SLF001 - made afresh at that size
    for i in range(20):
        encoding.render(processor, [{"role": "user", "content": [{"type": "text", "text": f"bounded {i}"}]}])
    assert len(encoding._memo(processor)) <= 8  # noqa: SLF001 - the bound is the point
