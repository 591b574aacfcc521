"""Tiny offline checkpoints of the real transformers classes, with a working processor.

``make_tiny(family, out_dir)`` writes, via ``save_pretrained``: a randomly initialised model of
the family's real class (``LlavaForConditionalGeneration``, ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``) and its processor: a byte-level BPE tokenizer built
locally with the family's special tokens, the family's image processor, and a chat template in
the family's format (:mod:`l2s_data.models.templates`). Nothing is downloaded.

The output is deterministic for a given (family, seed, sizes) and transformers version.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

try:  # transformers >= 5.2x: PIL backends in their own modules (no torchvision needed)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as _ClipImages
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as _QwenImages
except ImportError:  # older 5.x: the default classes are the PIL/numpy ones
    from transformers import CLIPImageProcessor as _ClipImages
    from transformers import Qwen2VLImageProcessor as _QwenImages

from l2s_data.errors import ConfigError
from l2s_data.models.processors import Qwen2_5_VLImageProcessorOnly, Qwen2VLImageProcessorOnly
from l2s_data.models.templates import TEMPLATES
from l2s_data.models.types import FAMILIES

__all__ = ["make_tiny", "build_tokenizer", "build_processor"]

_LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# A few hand-picked merges so that some tokens span several characters, as in a real BPE
# vocabulary (token boundaries then differ from character boundaries, which the position
# logic must handle). Byte-level symbols: "Ġ" is a space.
_MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "u"),
    ("Ġ", "a"), ("Ġ", "s"), ("o", "n"), ("r", "e"), ("a", "t"), ("e", "s"), ("i", "s"),
    ("S", "S"), ("A", "SS"), ("ASS", "I"), ("ASSI", "S"), ("T", ":"), ("U", "S"), ("US", "E"),
    ("USE", "R"), ("USER", ":"), ("Ġ", "i"), ("Ġi", "s"), ("Ġ", "u"), ("Ġu", "s"), ("Ġus", "er"),
]  # fmt: skip


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the family's special tokens (no download)."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for left, right in _MERGES:
        vocab.setdefault(left + right, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(_MERGES)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if family == "llava":
        tok.add_special_tokens(_LLAVA_SPECIALS)
        bos = tok.token_to_id("<s>")
        # Llama tokenizers prepend <s>; the processor's __call__ relies on it.
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
        )  # fmt: skip
    else:
        tok.add_special_tokens(_QWEN_SPECIALS)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        )  # fmt: skip
    fast.padding_side = "left"
    return fast


def build_processor(family: str, tokenizer: PreTrainedTokenizerFast, *, patch_size: int = 14):
    """The family's processor around ``tokenizer``, with small images (a few image tokens)."""
    template = TEMPLATES[family]
    if family == "llava":
        image_processor = _ClipImages(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
            do_center_crop=True, do_convert_rgb=True,
        )  # fmt: skip
        return LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=template,
        )  # fmt: skip
    # Images between 56x56 and 112x112 pixels: 4 to 16 image tokens after the 2x2 merge, so a
    # batch of differently sized images has different image-token counts.
    image_processor = _QwenImages(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=patch_size, merge_size=2, temporal_patch_size=2,
    )  # fmt: skip
    cls = Qwen2VLImageProcessorOnly if family == "qwen2-vl" else Qwen2_5_VLImageProcessorOnly
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _config(family: str, tok: PreTrainedTokenizerFast, hidden_size: int, layers: int):
    heads = 4
    if hidden_size % heads or (hidden_size // heads) % 2:
        raise ConfigError(
            f"hidden_size={hidden_size}: expected a multiple of {2 * heads} (4 attention heads with an even "
            "head dimension). Use e.g. 64 or 128."
        )
    head_dim = hidden_size // heads
    text = dict(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
        max_position_embeddings=1024, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    if family == "llava":
        vision = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=56, patch_size=14, projection_dim=32,
        )  # fmt: skip
        return LlavaConfig(
            vision_config=vision, text_config=LlamaConfig(bos_token_id=tok.bos_token_id, **text),
            image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16,
            vision_feature_select_strategy="default", vision_feature_layer=-2,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    # M-RoPE: the three sections (temporal, height, width) must sum to head_dim / 2.
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    text["bos_token_id"] = None  # Qwen2 has no BOS token; the class default is a real-vocab id
    ids = {
        "image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
    }
    if family == "qwen2-vl":
        vision = dict(
            depth=2, embed_dim=32, hidden_size=hidden_size, num_heads=2, mlp_ratio=2,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        )  # fmt: skip
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
    )  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


_MODEL_CLASSES = {
    "llava": LlavaForConditionalGeneration,
    "qwen2-vl": Qwen2VLForConditionalGeneration,
    "qwen2.5-vl": Qwen2_5_VLForConditionalGeneration,
}


def make_tiny(family: str, out_dir: str | Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 4) -> Path:
    """Write a tiny random checkpoint of ``family`` with its full processor to ``out_dir``.

    Returns the directory. ``from_pretrained(out_dir)`` and ``AutoProcessor.from_pretrained``
    reload it offline (HF_HUB_OFFLINE=1).
    """
    if family not in FAMILIES:
        raise ConfigError(f"family={family!r}: expected one of {', '.join(FAMILIES)}.")
    if layers < 1:
        raise ConfigError(f"layers={layers}: expected at least 1 decoder layer.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(family)
    processor = build_processor(family, tok)
    config = _config(family, tok, hidden_size, layers)
    # A private generator keeps the caller's RNG state untouched; weights depend on seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[family](config)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
