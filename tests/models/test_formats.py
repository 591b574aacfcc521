"""Golden tests: each tiny family renders and tokenizes a known conversation exactly as pinned.

The tiny checkpoints reproduce the real formats (llava-hf's template and SentencePiece-style
tokenizer; Qwen2-VL's ChatML and byte-level tokenizer), so what a position names here is what
it names on the real model. A failure means the template, the tokenizer or the position logic
changed. If that is intended, regenerate the golden files and review the diff:

    python tests/models/test_formats.py --regen
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2s_data.models import ChatInput, ContrastiveItem
from l2s_data.models.encoding import messages_for, render
from l2s_data.models.positions import position_tokens, token_strings

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
FAMILIES = ("llava", "qwen2-vl")
QUERY = "Is there a dog in the image?"
SUFFIX = " Answer yes or no."
POSITIVE, NEGATIVE = "Yes, the image", "No, the image"
ALL = ["prompt_last", "user_last", "completion_last", "completion_mean", "sequence_last", "sequence_last-1"]
WANT = {"input": ["prompt_last", "user_last", "sequence_last"], "pos": ALL}


def _item() -> ContrastiveItem:
    image = Image.fromarray(np.full((56, 56, 3), 128, dtype=np.uint8))
    return ContrastiveItem(image, QUERY, SUFFIX, POSITIVE, NEGATIVE)


def describe(adapter) -> dict:
    proc, item = adapter.processor, _item()
    pos = item.views()["pos"]
    user = messages_for(pos, with_completion=False)
    texts = {
        "user_turn": render(proc, user),
        "generation_prompt": render(proc, user, add_generation_prompt=True),
        "conversation": render(proc, messages_for(pos)),
        "open_completion": render(proc, messages_for(pos), continue_final_message=True),
    }
    ids = {name: proc.tokenizer(text)["input_ids"] for name, text in texts.items()}
    return {
        "texts": texts,
        "ids": ids,
        "tokens": {name: token_strings(proc, i) for name, i in ids.items()},
        "positions": {f"{r.view} {r.position}": {"sequence": r.sequence, "tokens": list(r.tokens)}
                      for r in position_tokens(adapter, item, WANT)},
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_a_known_conversation_renders_tokenizes_and_names_positions_as_pinned(family, tiny_adapter):
    want = json.loads((GOLDEN / f"format-{family}.json").read_text())
    got = json.loads(json.dumps(describe(tiny_adapter(family))))
    assert got["texts"] == want["texts"]
    assert got["ids"] == want["ids"]
    assert got["positions"] == want["positions"]
    assert got == want


def test_llava_renders_the_llava_hf_format_a_space_after_every_text_and_no_eos(tiny_adapter):
    d = describe(tiny_adapter("llava"))
    assert d["texts"]["conversation"] == f"USER: <image>\n{QUERY}{SUFFIX} ASSISTANT: {POSITIVE} "
    assert d["texts"]["user_turn"] == f"USER: <image>\n{QUERY}{SUFFIX} "
    assert "</s>" not in d["tokens"]["conversation"] and d["tokens"]["conversation"][0] == "<s>"
    # the newline after the image is a byte-fallback token, as in the Llama vocabulary
    assert d["tokens"]["conversation"][d["tokens"]["conversation"].index("<image>") + 1] == "<0x0A>"


def test_reference_llava_user_last_reads_the_trailing_space_and_prompt_last_the_colon(tiny_adapter):
    from l2s_data.behaviors import load_preset

    assert load_preset("reference-llava").task("safety").input_position == "user_last"
    d = describe(tiny_adapter("llava"))
    # the user turn alone ends with a lone "▁"; with the generation prompt that space is
    # part of "▁ASSISTANT", so user_last is read on the user turn's own sequence
    assert d["positions"]["input user_last"] == {"sequence": "input:user", "tokens": ["▁"]}
    assert d["tokens"]["user_turn"][-1] == "▁"
    assert d["tokens"]["generation_prompt"][-2:] == ["▁ASSISTANT", ":"]
    assert d["positions"]["input prompt_last"] == {"sequence": "input", "tokens": [":"]}
    # the reference's pos/neg position: the space after the answer; the answer's own last token
    assert d["positions"]["pos sequence_last"]["tokens"] == ["▁"]
    assert d["positions"]["pos completion_last"]["tokens"] == ["▁image"]


def test_qwen_user_last_is_the_newline_after_im_end_a_token_of_the_prompt_itself(tiny_adapter):
    d = describe(tiny_adapter("qwen2-vl"))
    assert d["positions"]["input user_last"] == {"sequence": "input", "tokens": ["Ċ"]}
    assert d["tokens"]["generation_prompt"][-3:] == ["<|im_start|>", "assistant", "Ċ"]
    assert d["positions"]["pos sequence_last-1"]["tokens"] == ["<|im_end|>"]


def test_a_decoded_llava_continuation_loses_the_space_at_the_join(tiny_adapter):
    """Why continuations are carried as ids: decoding strips the leading "▁" of a piece."""
    tok = tiny_adapter("llava").processor.tokenizer
    head = tok("Yes, the image", add_special_tokens=False)["input_ids"]
    tail = tok(" shows a dog", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(tail)[0] == "▁shows"
    text = tok.decode(head) + tok.decode(tail)
    assert text == "Yes, the imageshows a dog"
    assert tok(text, add_special_tokens=False)["input_ids"] != head + tail


def test_the_tiny_llava_tokenizer_falls_back_to_bytes_and_the_qwen_one_is_byte_level(tiny_adapter):
    llava = tiny_adapter("llava").processor.tokenizer
    pieces = llava.convert_ids_to_tokens(llava("é\t", add_special_tokens=False)["input_ids"])
    assert pieces == ["▁", "<0xC3>", "<0xA9>", "<0x09>"] and llava.unk_token_id not in llava("é\t")["input_ids"]
    qwen = tiny_adapter("qwen2-vl").processor.tokenizer
    assert qwen.convert_ids_to_tokens(qwen(" the\n\n", add_special_tokens=False)["input_ids"]) == ["Ġt", "he", "Ċ", "Ċ"]
    # the Qwen pre-tokenizer: a word keeps its leading space; a newline run is its own piece
    split = qwen.backend_tokenizer.pre_tokenizer.pre_tokenize_str("I'm here  now\n\nok")
    assert [piece for piece, _ in split] == ["I", "'m", "Ġhere", "Ġ", "Ġnow", "ĊĊ", "ok"]


def _regen() -> None:
    import tempfile

    from l2s_data.models import load_adapter, make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            adapter = load_adapter(make_tiny(family, Path(tmp) / family))
            (GOLDEN / f"format-{family}.json").write_text(json.dumps(describe(adapter), indent=1) + "\n")
            print(f"wrote {GOLDEN / f'format-{family}.json'}")


if __name__ == "__main__":
    if "--regen" in sys.argv:
        _regen()
