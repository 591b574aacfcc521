"""Tiny checkpoints reload offline as the real classes with their full processors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor, ProcessorMixin

from l2s_data.models import FAMILIES, ChatInput, load_adapter, make_tiny
from l2s_data.models.encoding import messages_for, render
from l2s_data.models.families import MODEL_CLASSES
from l2s_data.models.processors import load_processor


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_reloads_the_real_class_and_autoprocessor_returns_the_full_processor(
    family, tiny_checkpoint
):
    path = tiny_checkpoint(family)
    model = MODEL_CLASSES[family].from_pretrained(path, local_files_only=True)
    assert type(model) is MODEL_CLASSES[family]
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    assert isinstance(processor, ProcessorMixin), type(processor)
    assert processor.image_processor is not None and processor.chat_template
    special = {"llava": ["<image>", "<s>", "</s>"],
               "qwen2-vl": ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"],
               "qwen2.5-vl": ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"]}[family]
    for token in special:
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id, token


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_reproduces_the_family_format(family, tiny_adapter, make_image):
    proc = tiny_adapter(family).processor
    item = ChatInput(make_image(0), "What is this?", " Be brief.", "A box")
    prompt = render(proc, messages_for(item, with_completion=False), add_generation_prompt=True)
    full = render(proc, messages_for(item))
    if family == "llava":
        # llava-hf: a space after every text, no end-of-sequence token
        assert prompt == "USER: <image>\nWhat is this? Be brief. ASSISTANT:"
        assert full == "USER: <image>\nWhat is this? Be brief. ASSISTANT: A box "
        system = ChatInput(item.image, "Q", system="Be nice.")
        assert render(proc, messages_for(system), add_generation_prompt=True) == "Be nice. USER: <image>\nQ ASSISTANT:"
    else:
        head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        user = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this? Be brief.<|im_end|>\n"
        assert prompt == head + user + "<|im_start|>assistant\n"
        assert full == head + user + "<|im_start|>assistant\nA box<|im_end|>\n"


def test_make_tiny_is_deterministic_per_seed(tmp_path, tiny_checkpoint):
    again = make_tiny("llava", tmp_path / "again")
    other = make_tiny("llava", tmp_path / "other", seed=1)
    base = load_adapter(tiny_checkpoint("llava"))
    assert load_adapter(again).fingerprint() == base.fingerprint()
    assert load_adapter(other).fingerprint() != base.fingerprint()


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_a_directory_naming_the_stock_qwen_processor_still_loads_the_full_processor(family, tiny_checkpoint, tmp_path):
    # Real Qwen2-VL checkpoints name Qwen2VLProcessor, which needs torchvision for its video
    # processor; the loader falls back to the image-only class instead of a bare tokenizer.
    path = tmp_path / "real-layout"
    shutil.copytree(tiny_checkpoint(family), path)
    stock = {"qwen2-vl": "Qwen2VLProcessor", "qwen2.5-vl": "Qwen2_5_VLProcessor"}[family]
    for name in ("processor_config.json", "tokenizer_config.json"):
        cfg = json.loads((path / name).read_text())
        cfg["processor_class"] = stock
        (path / name).write_text(json.dumps(cfg))
    processor = load_processor(path, family)
    assert processor.image_processor is not None and processor.chat_template
    adapter = load_adapter(path)
    out = adapter.capture([ChatInput(_img(), "Hi?")], layers=[0], positions=["prompt_last"])
    assert out[("prompt_last", 0)].shape == (1, adapter.hidden_size)


def _img():
    from PIL import Image

    return Image.new("RGB", (60, 60), "white")


def test_bfloat16_adapter_reports_its_dtype_and_captures_float32(tiny_checkpoint):
    adapter = load_adapter(tiny_checkpoint("llava"), dtype="bfloat16")
    assert adapter.dtype == torch.bfloat16
    out = adapter.capture([ChatInput(_img(), "Hi?")], layers=[0], positions=["prompt_last"])
    assert out[("prompt_last", 0)].dtype == torch.float32


def test_build_tiny_takes_another_llava_vision_side_and_the_default_is_the_random_checkpoints():
    import PIL.Image

    from l2s_data.errors import ConfigError
    from l2s_data.models.families import process_images
    from l2s_data.models.tiny import TinyVision, build_tiny

    default, _ = build_tiny("llava")
    same, _ = build_tiny("llava", vision=TinyVision())
    assert default.config.to_dict() == same.config.to_dict() and default.config.vision_feature_layer == -2
    model, processor = build_tiny("llava", vision=TinyVision(patch_size=7, hidden_size=48, feature_layer=-1))
    assert model.config.image_seq_length == 64 and model.config.vision_feature_layer == -1
    vision = process_images("llava", processor, [PIL.Image.new("RGB", (80, 60), (200, 30, 30))])
    assert vision.n_tokens == [64]
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=vision.pixel_values, vision_feature_layer=-1,
                                               vision_feature_select_strategy="default").pooler_output
    assert feats[0].shape == (64, 64)
    with pytest.raises(ConfigError, match="only for family 'llava'"):
        build_tiny("qwen2-vl", vision=TinyVision())
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        build_tiny("llava", vision=TinyVision(image_size=60))
