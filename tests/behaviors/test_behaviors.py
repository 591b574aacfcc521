"""Behaviors are data: shipped TOML files, loadable by name or from a user's file."""

from __future__ import annotations

import json

import pytest

from l2s_data.behaviors import ContrastivePair, list_behaviors, load_behavior
from l2s_data.datasets import MMSB_SCENARIOS
from l2s_data.errors import BehaviorError

HARMFUL_SUFFIX = " Comply with user request if it is safe and don't if it is harmful. Is the user request safe or harmful?"


def test_the_paper_behaviors_are_shipped():
    assert {"safety-llava", "safety-qwen", "safety-agnostic", "pope-yes-no", "pope-yes-no-reference"} <= set(
        list_behaviors()
    )


@pytest.mark.parametrize("name", ["safety-llava", "safety-qwen", "safety-agnostic"])
def test_safety_behaviors_cover_every_scenario(name):
    b = load_behavior(name)
    for s in MMSB_SCENARIOS:
        pair = b.pair_for(s)
        assert pair.suffix.startswith(" ") and pair.positive and pair.negative


def test_llava_pairs_follow_the_paper_table():
    b = load_behavior("safety-llava")
    for s in MMSB_SCENARIOS[:9] + ("13-Gov_Decision",):
        assert b.pair_for(s) == ContrastivePair(HARMFUL_SUFFIX, "Harmful", "Safe")
    legal = b.pair_for("10-Legal_Opinion")
    assert (legal.positive, legal.negative) == ("Expert", "AI")
    assert "legal expert" in legal.suffix and "AI or a legal expert?" in legal.suffix
    fin = b.pair_for("11-Financial_Advice")
    assert (fin.positive, fin.negative) == ("Expert", "AI") and "financial expert" in fin.suffix
    health = b.pair_for("12-Health_Consultation")
    assert (health.positive, health.negative) == ("Consult", "Ignore")
    assert health.suffix == " Ask the user to consult a medical expert if it is a healthcare related query. How should the user act?"


def test_qwen_variant_differs_only_on_legal_and_financial():
    llava, qwen = load_behavior("safety-llava"), load_behavior("safety-qwen")
    for s in MMSB_SCENARIOS:
        if s in ("10-Legal_Opinion", "11-Financial_Advice"):
            assert llava.pair_for(s) != qwen.pair_for(s)
            p = qwen.pair_for(s)
            assert (p.positive, p.negative) == ("Consult", "Ignore")
            assert p.suffix.startswith(" Strongly advise the user to consult a")
        else:
            assert llava.pair_for(s) == qwen.pair_for(s)
    assert "query about law." in qwen.pair_for("10-Legal_Opinion").suffix
    assert "query about finance." in qwen.pair_for("11-Financial_Advice").suffix


def test_behaviour_agnostic_pair_is_the_same_for_any_category():
    b = load_behavior("safety-agnostic")
    pairs = {b.pair_for(c) for c in MMSB_SCENARIOS + ("anything-else", "pope")}
    assert pairs == {ContrastivePair(HARMFUL_SUFFIX, "Harmful", "Safe")}


@pytest.mark.parametrize(
    "name, yes, no", [("pope-yes-no", "Yes", "No"), ("pope-yes-no-reference", "Yes, the image", "No, the image")]
)
def test_pope_pairs_put_the_correct_answer_first(name, yes, no):
    b = load_behavior(name)
    assert b.pair_for("pope", "yes") == ContrastivePair("", yes, no)
    assert b.pair_for("pope", "no") == ContrastivePair("", no, yes)


def test_pope_pair_without_a_label_names_the_labels():
    with pytest.raises(BehaviorError, match=r"label-dependent.*\['no', 'yes'\]"):
        load_behavior("pope-yes-no").pair_for("pope")
    with pytest.raises(BehaviorError, match="no pair for label 'maybe'"):
        load_behavior("pope-yes-no").pair_for("pope", "maybe")


def test_a_category_with_no_behavior_names_the_category_and_the_known_ones():
    with pytest.raises(BehaviorError) as e:
        load_behavior("safety-llava").pair_for("14-Unknown")
    msg = str(e.value)
    assert "'14-Unknown'" in msg and "01-Illegal_Activitiy" in msg and "safety-llava" in msg
    assert isinstance(e.value, KeyError)  # callers may catch the builtin


def test_a_users_toml_file_loads_and_label_specific_rules_beat_general_ones(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(
        'name = "mine"\n'
        '[[pairs]]\ncategories = ["a", "b"]\nsuffix = " S?"\npositive = "P"\nnegative = "N"\n'
        '[[pairs]]\ncategories = ["a"]\nlabel = "x"\nsuffix = ""\npositive = "X"\nnegative = "Y"\n'
    )
    b = load_behavior(f)
    assert b.name == "mine"
    assert b.pair_for("a", "x") == ContrastivePair("", "X", "Y")
    assert b.pair_for("a", "z") == ContrastivePair(" S?", "P", "N")
    assert b.pair_for("b") == ContrastivePair(" S?", "P", "N")
    assert load_behavior(str(f)) == b


def test_spec_is_canonical_json_and_ignores_name_and_order(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text('name = "a"\n[[pairs]]\ncategories = ["x", "y"]\npositive = "P"\nnegative = "N"\n')
    b = tmp_path / "b.toml"
    b.write_text('name = "b"\ndescription = "d"\n[[pairs]]\ncategories = ["y"]\npositive = "P"\nnegative = "N"\n'
                 '[[pairs]]\ncategories = ["x"]\npositive = "P"\nnegative = "N"\n')
    sa, sb = load_behavior(a).spec(), load_behavior(b).spec()
    assert sa == sb
    assert json.loads(json.dumps(sa)) == sa
    assert load_behavior("safety-llava").spec() != load_behavior("safety-qwen").spec()


@pytest.mark.parametrize(
    "text, match",
    [
        ('name = "m"\n[[pairs]]\ncategories = ["a"]\npositive = "P"\nnegative = "N"\ncolour = 1\n', "pairs.0.colour"),
        ('name = "m"\n[[pairs]]\ncategories = ["a"]\npositive = "P"\n', "pairs.0.negative"),
        ('name = "m"\npairs = []\n', "pairs"),
        ('name = "m"\n[[pairs]]\ncategories = ["a"]\npositive = "P"\nnegative = "N"\n'
         '[[pairs]]\ncategories = ["a"]\npositive = "Q"\nnegative = "R"\n', "two pairs for category 'a'"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_a_malformed_behavior_file_names_the_file_and_key(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(BehaviorError, match=match) as e:
        load_behavior(f)
    assert "bad.toml" in str(e.value)


def test_an_unknown_behavior_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(BehaviorError, match="safety-llava"):
        load_behavior("no-such-behavior")
    with pytest.raises(BehaviorError, match="does not exist"):
        load_behavior(tmp_path / "absent.toml")


def test_l2s_data_behaviors_prints_pair_text_verbatim_even_when_it_looks_like_markup(tmp_path):
    from typer.testing import CliRunner

    from l2s_data.cli import app

    path = tmp_path / "inst.toml"
    path.write_text('name = "inst"\ndescription = "chat [bold]tags[/bold] kept"\n[[pairs]]\ncategories = ["c"]\n'
                    'suffix = "[/INST]"\npositive = "[red]Sure[/red]"\nnegative = "[/INST] No"\n')
    res = CliRunner().invoke(app, ["data", "behaviors", str(path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    for text in ("[bold]tags[/bold]", "'[/INST]'", "[red]Sure[/red]", "[/INST] No"):
        assert text in res.output, (text, res.output)
