"""Presets are data and name every field of DESIGN's reference-protocol table."""

from __future__ import annotations

import json
import tomllib
from importlib import resources

import pytest
from pydantic import BaseModel

from l2s_data.behaviors import Preset, TaskPreset, list_presets, load_behavior, load_preset
from l2s_data.behaviors.preset import PRESET_POSITIONS
from l2s_data.datasets import MMSB_SCENARIOS
from l2s_data.errors import BehaviorError


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaf_paths(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_reference_and_default_presets_are_shipped():
    assert {"reference-llava", "reference-qwen", "default-llava", "default-qwen"} <= set(list_presets())


@pytest.mark.parametrize("name", ["reference-llava", "reference-qwen", "default-llava", "default-qwen"])
def test_every_shipped_preset_loads_and_its_file_names_every_field(name):
    preset = load_preset(name)
    raw = tomllib.loads(
        resources.files("l2s_data.behaviors").joinpath(f"data/presets/{name}.toml").read_text("utf-8")
    )
    for path in _leaf_paths(Preset):
        node = raw
        for part in path.split("."):
            assert part in node, f"{name}.toml does not name {path}"
            node = node[part]
        value = preset
        for part in path.split("."):
            value = getattr(value, part)  # every field reachable as an attribute
    spec = preset.spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["name"] == name
    for task in (preset.safety, preset.pope):
        assert task.input_position in PRESET_POSITIONS
        load_behavior(task.behavior)


def test_reference_llava_matches_the_design_table():
    p = load_preset("reference-llava")
    assert p.family == "llava" and p.reference
    s, q = p.safety, p.pope
    assert s.behavior == "safety-llava" and s.baseline_behavior == "safety-agnostic"
    assert (s.input_position, s.pair_position) == ("user_last", "sequence_last")
    assert all(s.pair_position_for(c) == "sequence_last" for c in MMSB_SCENARIOS)
    assert (s.steer_layer, s.input_layer) == (15, 30)
    assert (q.steer_layer, q.input_layer) == (14, 14)
    assert s.alpha == 2.2 and q.alpha == 1.0
    assert s.target_scaling.method == "group_mean_norm" and s.target_scaling.reference_group == "harmful"
    groups = s.target_scaling.groups
    assert groups["legal_financial"] == ["10-Legal_Opinion", "11-Financial_Advice"]
    assert groups["health"] == ["12-Health_Consultation"]
    assert sorted(sum(groups.values(), [])) == sorted(MMSB_SCENARIOS)
    t = s.trainer
    assert (t.hidden_size, t.l1_weight, t.cos_weight, t.cos_ramp_epochs) == (100, 1.0, 0.1, 0)
    assert (t.lr, t.schedule, t.select, t.decoder_init) == (1e-4, "constant", "last_epoch", "dictionary_learning")
    assert (s.split.method, s.split.test_fraction, s.split.seed) == ("shuffle", 0.2, 21)
    # POPE: "Yes, the image" / "No, the image" + up to 100 sampled tokens, mean after the prompt.
    pair = load_behavior(q.behavior).pair_for("pope", "yes")
    assert (pair.positive, pair.negative) == ("Yes, the image", "No, the image")
    assert q.completion.max_new_tokens == 100 and q.completion.do_sample
    assert q.pair_position == "completion_mean"
    qt = q.trainer
    assert (qt.lr, qt.schedule, qt.warmup_epochs, qt.select, qt.balance_labels) == (
        5e-5, "cosine", 50, "best_validation", True)
    assert (qt.cos_weight, qt.cos_ramp_epochs, qt.decoder_init, qt.hidden_size) == (0.1, 100, "truncated_svd", 100)
    assert q.split.method == "separate_train_set"


def test_reference_qwen_reads_sequence_last_minus_one_on_10_to_13():
    p = load_preset("reference-qwen")
    s, q = p.safety, p.pope
    assert p.family == "qwen2-vl" and s.behavior == "safety-qwen"
    for c in MMSB_SCENARIOS:
        expected = "sequence_last-1" if c[:2] in ("10", "11", "12", "13") else "sequence_last"
        assert s.pair_position_for(c) == expected
    assert (s.steer_layer, s.input_layer) == (14, 14)
    assert (q.steer_layer, q.input_layer) == (17, 17)
    assert q.trainer.hidden_size == 400


def test_default_presets_use_the_clean_protocol():
    for name in ("default-llava", "default-qwen"):
        p = load_preset(name)
        for task in (p.safety, p.pope):
            assert (task.input_position, task.pair_position) == ("prompt_last", "completion_last")
            assert task.pair_position_overrides == {}
            assert task.target_scaling.method == "none"
            assert (task.trainer.l1_weight, task.trainer.cos_weight, task.trainer.lr) == (0.0, 0.0, 1e-4)
            assert task.split.method == "by_image" and task.completion.max_new_tokens == 0
        assert p.pope.behavior == "pope-yes-no"


def test_a_users_preset_file_loads_with_defaults_and_rejects_unknown_keys(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text(
        'name = "mine"\ndescription = ""\nfamily = "llava"\nreference = false\n'
        '[safety]\ndataset = "synthetic-safety"\nbehavior = "safety-llava"\ninput_layer = 2\nsteer_layer = 1\nalpha = 1.5\n'
        '[pope]\ndataset = "shapes-pope"\nbehavior = "pope-yes-no"\ninput_layer = 2\nsteer_layer = 2\nalpha = 1.0\n'
    )
    p = load_preset(good)
    assert isinstance(p.safety, TaskPreset) and p.safety.trainer.hidden_size == 100
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("alpha = 1.5", "alpha = 1.5\nalhpa = 2"))
    with pytest.raises(BehaviorError, match=r"safety\.alhpa") as e:
        load_preset(bad)
    assert "bad.toml" in str(e.value)
    wrong_pos = tmp_path / "pos.toml"
    wrong_pos.write_text(good.read_text().replace('input_layer = 2\nsteer_layer = 1', 'input_position = "last"\ninput_layer = 2\nsteer_layer = 1'))
    with pytest.raises(BehaviorError, match="safety.input_position"):
        load_preset(wrong_pos)
    unknown_behavior = tmp_path / "ub.toml"
    unknown_behavior.write_text(good.read_text().replace('"safety-llava"', '"safety-nope"'))
    with pytest.raises(BehaviorError, match="safety-nope"):
        load_preset(unknown_behavior)


def test_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(BehaviorError, match="reference-llava"):
        load_preset("reference-gpt")
