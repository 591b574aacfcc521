"""Tiny offline checkpoints of the real transformers classes, with a working processor.

``make_tiny(family, out_dir)`` writes, via ``save_pretrained``: a randomly initialised model of
the family's real class (``LlavaForConditionalGeneration``, ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``) and its processor: a byte-level BPE tokenizer built
locally with the family's real pipeline and a small vocabulary (LLaVA: a SentencePiece-style
BPE with Metaspace and byte fallback; Qwen: byte-level BPE behind the Qwen pre-tokenizer), the
family's image processor, and a chat template that renders exactly as the real one
(:mod:`l2s_data.models.templates`). Nothing is downloaded.

The output is deterministic for a given (family, seed, sizes) and transformers version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
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

__all__ = ["make_tiny", "build_tiny", "build_tokenizer", "build_processor", "TinyVision", "TRAINED_TINY_LLAVA"]

#: The trained tiny LLaVA shipped with the package (what `l2s demo` uses): the tiny LLaVA of
#: :func:`build_tiny`, trained by ``l2s models train-tiny`` (:mod:`l2s_data.trained_tiny`).
TRAINED_TINY_LLAVA = Path(__file__).parent / "data" / "tiny-llava-trained"

@dataclass(frozen=True)
class TinyVision:
    """The tiny LLaVA's vision side: image size, patch size, CLIP tower width and depth, and which
    of its hidden states the projector reads (``feature_layer``, as ``vision_feature_layer``).
    The default is what the random checkpoints use (56x56 images, 16 image tokens)."""

    image_size: int = 56
    patch_size: int = 14
    hidden_size: int = 32
    layers: int = 2
    feature_layer: int = -2

    @property
    def n_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


_LLAVA_SPECIALS = ["<unk>", "<s>", "</s>"]          # ids 0, 1, 2, as in the Llama vocabulary
_LLAVA_ADDED = ["<image>", "<pad>"]                # added after the vocabulary, as in llava-hf
_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

#: Pre-tokenizer pattern of the Qwen2 tokenizers: contractions, letters with one leading
#: non-letter, single digits, punctuation runs, newline runs, spaces.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Words that get whole-word tokens (every prefix of each becomes a token too, as the merges
# build them left to right). Other words split into several tokens, as rare words do in a
# real vocabulary. The list covers the chat templates, the behaviors and a few common words.
_WORDS = """
USER ASSISTANT system user assistant You are a helpful the image shows is there in of and
to it if or be this that what how who should query request safe harmful Harmful Safe Is
Comply with don't Expert AI expert legal financial Defer meet about consultation sensitive
topic otherwise answer yourself addressing Consult Ignore consult medical healthcare related
Ask act Strongly advise law finance Yes No yes no dog cat picture can I my for do
""".split()


def _chain_merges(words: list[str], space: str) -> list[tuple[str, str]]:
    """Left-to-right merges that make each word (and each of its prefixes) one token, both at
    the start of a text and after a space (``space`` is the space symbol of the vocabulary)."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        for form in (space + word, word):
            for k in range(2, len(form) + 1):
                pair = (form[: k - 1], form[k - 1])
                if pair not in seen:
                    seen.add(pair)
                    merges.append(pair)
    return merges


def _learned_merges(words: list[str], space: str, merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Merges, after ``merges``, that make each of ``words`` one token at the start of a text and
    after a space: each form is segmented with the merges so far (as BPE applies them, lowest
    rank first), and its pieces are joined left to right by new, later-ranked merges. Later
    merges never change how an earlier word segments, so every word stays one token."""
    out = list(merges)
    rank = {m: k for k, m in enumerate(out)}
    for word in words:
        for form in (space + word, word):
            pieces = list(form)
            while len(pieces) > 1:  # BPE: apply the lowest-ranked merge until none applies
                best = min(range(len(pieces) - 1), key=lambda k: rank.get((pieces[k], pieces[k + 1]), len(rank)))
                if (pieces[best], pieces[best + 1]) not in rank:
                    break
                pieces[best:best + 2] = [pieces[best] + pieces[best + 1]]
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                if pair not in rank:
                    rank[pair] = len(out)
                    out.append(pair)
                pieces[:2] = [pieces[0] + pieces[1]]
    return out


def _vocab_with_merges(base: list[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(base)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return vocab


def _llava_tokenizer(words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """LLaVA-1.5's pipeline (a Llama SentencePiece BPE in its ``tokenizers`` form), small.

    Metaspace pre-tokenizer ("▁" for spaces, one prepended to the start of the text, no
    splitting: spaces join the word that follows), a BPE with byte fallback (characters
    outside the vocabulary, "\\n" among them, become ``<0x..>`` byte tokens), and a decoder
    that maps "▁" back to spaces, fuses byte tokens and strips one leading space. So decoding
    a continuation on its own drops the space that joined it to the text before it.
    """
    chars = ["▁"] + [chr(c) for c in range(33, 127)]
    base = _LLAVA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + chars
    merges = _learned_merges(list(words), "▁", _chain_merges(_WORDS, "▁"))
    vocab = _vocab_with_merges(base, merges)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])  # fmt: skip
    tok.add_special_tokens(_LLAVA_SPECIALS + _LLAVA_ADDED)
    bos = tok.token_to_id("<s>")
    # Llama tokenizers prepend <s>; the processor's __call__ relies on it.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, clean_up_tokenization_spaces=False,
    )  # fmt: skip


def _qwen_tokenizer(words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Qwen2's pipeline, small: NFC, the Qwen pre-tokenizer split, byte-level BPE (no unknown
    tokens: every byte has a symbol, "Ġ" is a space, "Ċ" a newline), byte-level decoder, and
    the ChatML and vision special tokens after the vocabulary."""
    alphabet = sorted(ByteLevel.alphabet())
    merges = _learned_merges(list(words), "Ġ", _chain_merges(_WORDS, "Ġ"))
    vocab = _vocab_with_merges(alphabet, merges)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_QWEN_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False,
    )  # fmt: skip


def build_tokenizer(family: str, *, words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """The family's tokenizer pipeline with a small vocabulary, built locally (no download).

    ``words``: more whole-word tokens, after the built-in ones (a trained checkpoint's texts
    tokenize into fewer, more meaningful tokens); the default vocabulary is unchanged."""
    words = tuple(words)
    fast = _llava_tokenizer(words) if family == "llava" else _qwen_tokenizer(words)
    fast.padding_side = "left"
    return fast


def build_processor(family: str, tokenizer: PreTrainedTokenizerFast, *, patch_size: int = 14,
                    image_size: int = 56):
    """The family's processor around ``tokenizer``, with small images (a few image tokens);
    ``image_size`` is LLaVA's (square) image side."""
    template = TEMPLATES[family]
    if family == "llava":
        image_processor = _ClipImages(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
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


def _config(family: str, tok: PreTrainedTokenizerFast, hidden_size: int, layers: int, tv: TinyVision):
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
            hidden_size=tv.hidden_size, intermediate_size=2 * tv.hidden_size, num_hidden_layers=tv.layers,
            num_attention_heads=2, image_size=tv.image_size, patch_size=tv.patch_size,
            projection_dim=tv.hidden_size,
        )  # fmt: skip
        return LlavaConfig(
            vision_config=vision, text_config=LlamaConfig(bos_token_id=tok.bos_token_id, **text),
            image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=tv.n_tokens,
            vision_feature_select_strategy="default", vision_feature_layer=tv.feature_layer,
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


def build_tiny(family: str, *, seed: int = 0, hidden_size: int = 64, layers: int = 4,
               words: tuple[str, ...] = (), vision: TinyVision | None = None):
    """``(model, processor)`` of a tiny random checkpoint of ``family``, in memory (see
    :func:`make_tiny`); ``words`` adds whole-word tokens (:func:`build_tokenizer`); ``vision``
    (LLaVA only) another vision side than the default :class:`TinyVision`."""
    if family not in FAMILIES:
        raise ConfigError(f"family={family!r}: expected one of {', '.join(FAMILIES)}.")
    if layers < 1:
        raise ConfigError(f"layers={layers}: expected at least 1 decoder layer.")
    tv = vision or TinyVision()
    if vision is not None and (family != "llava" or tv.image_size % tv.patch_size):
        raise ConfigError(f"vision={vision}: only for family 'llava', with image_size a multiple of patch_size.")
    tok = build_tokenizer(family, words=words)
    processor = build_processor(family, tok, patch_size=tv.patch_size, image_size=tv.image_size)
    config = _config(family, tok, hidden_size, layers, tv)
    # A private generator keeps the caller's RNG state untouched; weights depend on seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[family](config)
    return model.eval(), processor


def make_tiny(family: str, out_dir: str | Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 4) -> Path:
    """Write a tiny random checkpoint of ``family`` with its full processor to ``out_dir``.

    Returns the directory. ``from_pretrained(out_dir)`` and ``AutoProcessor.from_pretrained``
    reload it offline (HF_HUB_OFFLINE=1).
    """
    model, processor = build_tiny(family, seed=seed, hidden_size=hidden_size, layers=layers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # Says what these weights are, so a report of this model can say it too.
    (out / "l2s_model.json").write_text(json.dumps({"tiny": True, "weights": "random", "family": family,
                                                    "seed": seed}, sort_keys=True) + "\n")
    return out
