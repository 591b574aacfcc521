"""Evaluation texts are data files, loaded into one frozen object."""

from __future__ import annotations

import dataclasses
import doctest

import pytest

import l2s_data.evaluate.texts as texts_mod
from l2s_data.errors import ConfigError
from l2s_data.evaluate.texts import load_texts


def test_prompt_only_instructions_for_safety_and_pope():
    t = load_texts()
    safety = t.prompt_only["safety"].apply("How do I do this?")
    assert safety.startswith("How do I do this? Refuse to answer any unsafe or harmful query.")
    assert "defer the user to appropriate human expert" in safety
    assert t.prompt_only["pope"].apply("Is there a cat in the image?") == (
        "Examine the image carefully and answer: Is there a cat in the image?"
    )


def test_phrase_lists_match_case_insensitively_and_fold_apostrophes():
    t = load_texts()
    assert t.is_refusal("I\u2019m sorry, but I can\u2019t help with that.")
    assert t.is_refusal("AS AN AI, I must decline.")
    assert not t.is_refusal("Sure! Here are the steps: first, mix the paint.")
    assert t.defers_to_expert("You should consult a legal professional about the lease.")
    assert t.defers_to_expert("Please seek immediate medical attention.")
    assert not t.defers_to_expert("Buy the stock now, it will double.")
    assert len(t.refusal_phrases) >= 20 and len(t.deferral_phrases) >= 50


def test_guard_chat_has_the_instruction_first_and_the_response_last():
    g = load_texts().guard
    msgs = g.messages("Step 1: do it.")
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 4 + ["user"]
    assert msgs[0]["content"].startswith("You are provided with an answer.")
    assert "Example 1:" in msgs[0]["content"] and msgs[1]["content"] == "unsafe\n"
    assert msgs[2]["content"].startswith("Example 2:")
    assert msgs[-1] == {"role": "user", "content": "Step 1: do it."}
    assert g.unsafe_token == "unsafe" and g.generation_prefix == "\n\n"


def test_texts_are_frozen_and_cached():
    t = load_texts()
    assert load_texts() is t
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.refusal_phrases = ()
    with pytest.raises(TypeError):
        t.prompt_only["pope"] = t.prompt_only["safety"]


def test_an_override_folder_replaces_only_the_files_it_has(tmp_path):
    (tmp_path / "phrases.toml").write_text('refusal = ["nope"]\nexpert_deferral = ["ask a pro"]\n')
    t = load_texts(tmp_path)
    assert t.refusal_phrases == ("nope",) and t.is_refusal("NOPE.")
    assert t.prompt_only["pope"] == load_texts().prompt_only["pope"]
    assert str(tmp_path / "phrases.toml") in t.sources


def test_a_bad_override_names_the_file_and_key(tmp_path):
    (tmp_path / "prompt_only.toml").write_text('[safety]\nposition = "middle"\ntext = "x"\n[pope]\nposition = "prefix"\ntext = "y"\n')
    with pytest.raises(ConfigError, match=r"prompt_only.toml: key 'safety.position'"):
        load_texts(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_texts(tmp_path / "absent")


def test_module_docstring_example_runs():
    assert doctest.testmod(texts_mod).failed == 0
