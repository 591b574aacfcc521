"""Each bad input gets a clear error naming the offending value, and nothing else breaks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from l2s_data.errors import LayerIndexError, ModelLoadError, PositionError, PromptTooLongError
from l2s_data.models import FAMILIES, ChatInput, ContrastiveItem, load_adapter


@pytest.mark.parametrize("family", FAMILIES)
def test_a_prompt_longer_than_the_context_is_refused_and_the_adapter_still_works(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    ok = ChatInput(make_image(0), "What is it?")
    before = adapter.capture([ok], layers=[0], positions=["prompt_last"])
    long = ChatInput(make_image(1), "word " * 400)
    with pytest.raises(PromptTooLongError, match=rf"more than the model's context of {adapter.max_context}"):
        adapter.check(long, layers=[0], positions=["prompt_last"])
    with pytest.raises(PromptTooLongError, match=r"item 1: the templated sequence has \d+ tokens"):
        adapter.capture([ok, long], layers=[0], positions=["prompt_last"])
    with pytest.raises(PromptTooLongError):
        adapter.generate([long], max_new_tokens=2)
    after = adapter.capture([ok], layers=[0], positions=["prompt_last"])
    assert torch.equal(before[("prompt_last", 0)], after[("prompt_last", 0)])


@pytest.mark.parametrize("layer", [4, -1, 99])
def test_a_layer_index_out_of_range_names_the_index_and_the_range(layer, tiny_adapter, make_image):
    adapter = tiny_adapter("llava")
    item = ChatInput(make_image(0), "Q?")
    with pytest.raises(LayerIndexError, match=rf"layer {layer} is out of range.*\[0, 3\]"):
        adapter.check(item, layers=[0, layer], positions=["prompt_last"])
    with pytest.raises(LayerIndexError, match=rf"layer {layer}"):
        adapter.capture([item], layers=[layer], positions=["prompt_last"])
    with pytest.raises(LayerIndexError), adapter.steering(layer, torch.zeros(adapter.hidden_size), 1.0):
        pass
    with pytest.raises(IndexError):  # the builtin a caller may catch instead
        adapter.check(item, layers=[layer], positions=["prompt_last"])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_position_the_sequence_does_not_have_is_named(family, tiny_adapter, make_image):
    adapter = tiny_adapter(family)
    item = ChatInput(make_image(0), "Q?")
    with pytest.raises(PositionError, match="'completion_mean' needs a teacher-forced completion"):
        adapter.check(item, layers=[0], positions=["completion_mean"])
    with pytest.raises(PositionError, match="'completion_last'"):
        adapter.capture([item], layers=[0], positions=["completion_last"])
    with pytest.raises(PositionError, match="'middle' is unknown"):
        adapter.check(item, layers=[0], positions=["middle"])
    empty = ContrastiveItem(make_image(0), "Q?", " S?", "", "No")
    with pytest.raises(PositionError, match="view 'pos'"):
        adapter.check(empty, layers=[0], positions=["completion_last"])
    with pytest.raises(PositionError):
        adapter.capture_contrastive([empty], input_layers=[0], input_positions=["prompt_last"], pair_layers=[0],
                                    pair_positions=["completion_last"])
    good = ContrastiveItem(make_image(0), "Q?", " S?", "Yes", "No")
    adapter.check(good, layers=[0, 3], positions=["completion_mean", "prompt_last"])


def test_a_directory_without_a_supported_model_is_refused(tmp_path, tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_adapter(tmp_path)
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_adapter(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="model_type 'bert' is not supported"):
        load_adapter(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint("llava"), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot load a LlavaForConditionalGeneration"):
        load_adapter(broken)
    with pytest.raises(OSError):  # ModelLoadError is also an OSError
        load_adapter(tmp_path / "missing")


def test_remote_code_named_by_a_checkpoint_does_not_run_unless_asked(tmp_path, tiny_checkpoint):
    path = tmp_path / "remote"
    shutil.copytree(tiny_checkpoint("llava"), path)
    marker = tmp_path / "remote-code-ran"
    (path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                  "from transformers import LlavaForConditionalGeneration as Evil\n")
    for name, auto in (("config.json", "AutoModelForImageTextToText"), ("processor_config.json", "AutoProcessor")):
        cfg = json.loads((path / name).read_text())
        cfg["auto_map"] = {auto: "evil.Evil"}
        (path / name).write_text(json.dumps(cfg))
    adapter = load_adapter(path)
    assert adapter.family == "llava"
    assert not marker.exists()
