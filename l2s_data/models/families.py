"""What differs between the supported families: classes, detection, vision inputs, positions.

Everything here is driven by the checkpoint's ``config.json`` (``model_type``), so a real
LLaVA-1.5 (llava-hf layout) or Qwen2-VL / Qwen2.5-VL directory takes the same path as a tiny one.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from transformers import (
    LlavaForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from l2s_data.errors import ModelLoadError
from l2s_data.models.types import FAMILIES

__all__ = ["MODEL_TYPES", "MODEL_CLASSES", "family_of", "Vision", "process_images", "position_ids", "decoder_layers"]

#: config.json ``model_type`` -> family
MODEL_TYPES = {"llava": "llava", "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}
MODEL_CLASSES = {
    "llava": LlavaForConditionalGeneration,
    "qwen2-vl": Qwen2VLForConditionalGeneration,
    "qwen2.5-vl": Qwen2_5_VLForConditionalGeneration,
}


def family_of(model_type: str | None, where: str) -> str:
    """Family of a config ``model_type``; :class:`ModelLoadError` naming it if unsupported."""
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    hint = ""
    if model_type == "llava_llama":
        hint = " This is the original LLaVA repository layout; use the llava-hf conversion (model_type 'llava')."
    raise ModelLoadError(
        f"{where}: model_type {model_type!r} is not supported; expected one of "
        f"{', '.join(sorted(MODEL_TYPES))} (families {', '.join(FAMILIES)}).{hint}"
    )


def image_token_id(config) -> int:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ModelLoadError(f"{type(config).__name__} has no image token id (image_token_id / image_token_index).")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers: ``model.model.language_model.layers`` in transformers 5.x."""
    for path in ("model.language_model.layers", "language_model.model.layers", "model.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelLoadError(f"{type(model).__name__}: cannot find the decoder layers (model.language_model.layers).")


@dataclass
class Vision:
    """Preprocessed images (CPU tensors) and how many image tokens each expands to.

    llava: ``pixel_values`` [N, 3, H, W]. qwen: ``pixel_values`` [sum of patches, C*T*P*P]
    (images concatenated), ``grid`` [N, 3] (t, h, w patches), ``offsets`` [N + 1] patch offsets.
    """

    family: str
    pixel_values: torch.Tensor
    n_tokens: list[int]
    grid: torch.Tensor | None = None
    offsets: list[int] | None = None

    @staticmethod
    def concat(parts: "Sequence[Vision]") -> "Vision":
        """The images of ``parts``, in order, as one :class:`Vision`."""
        first = parts[0]
        n_tokens = [n for p in parts for n in p.n_tokens]
        pixels = torch.cat([p.pixel_values for p in parts])
        if first.grid is None:
            return Vision(first.family, pixels, n_tokens)
        grid = torch.cat([p.grid for p in parts])
        offsets = [0, *torch.cumsum(grid.prod(-1), 0).tolist()]
        return Vision(first.family, pixels, n_tokens, grid, offsets)

    def select(self, images: "Sequence[int]") -> "Vision":
        """The images ``images`` (indices, in this order) as a :class:`Vision` of their own."""
        images = list(images)
        n_tokens = [self.n_tokens[i] for i in images]
        if self.grid is None:
            return Vision(self.family, self.pixel_values[images], n_tokens)
        kw = self.take(images)
        grid = kw["image_grid_thw"]
        return Vision(self.family, kw["pixel_values"], n_tokens, grid, [0, *torch.cumsum(grid.prod(-1), 0).tolist()])

    def take(self, images: list[int]) -> dict[str, torch.Tensor]:
        """Forward kwargs for the images ``images`` (indices, in row order)."""
        if self.family == "llava":
            return {"pixel_values": self.pixel_values[images]}
        parts = [self.pixel_values[self.offsets[i] : self.offsets[i + 1]] for i in images]
        return {"pixel_values": torch.cat(parts), "image_grid_thw": self.grid[images]}


def process_images(family: str, processor, images: list[PIL.Image.Image]) -> Vision:
    """Run the image processor once over ``images`` and count each one's image tokens."""
    out = processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    if family == "llava":
        pixels = out["pixel_values"]
        h, w = pixels.shape[-2:]
        # The same count as LlavaProcessor.replace_image_token.
        n = (h // processor.patch_size) * (w // processor.patch_size) + processor.num_additional_image_tokens
        if processor.vision_feature_select_strategy == "default":
            n -= 1
        return Vision(family, pixels, [int(n)] * len(images))
    grid = out["image_grid_thw"]
    merge = processor.image_processor.merge_size
    patches = grid.prod(-1)
    offsets = [0, *torch.cumsum(patches, 0).tolist()]
    return Vision(family, out["pixel_values"], (patches // merge**2).tolist(), grid, offsets)


def position_ids(family: str, model, ids: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor | None,
                 image_token: int) -> torch.Tensor:
    """Position ids of a left-padded batch: [R, L] (llava) or M-RoPE [3, R, L] (qwen).

    Computed on the CPU before the forward. Padding positions get 0 (they are masked).
    """
    if family == "llava":
        return (mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs = {"image_grid_thw": grid, "attention_mask": mask}
    if takes_mm_token_types(model.model.get_rope_index):  # transformers >= 5.2x; older ones find images by id
        kwargs["mm_token_type_ids"] = (ids == image_token).int()
    pos, _ = model.model.get_rope_index(ids, **kwargs)
    return pos


def takes_mm_token_types(fn) -> bool:
    return "mm_token_type_ids" in inspect.signature(fn).parameters
