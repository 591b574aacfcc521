"""Chat templates of the tiny checkpoints, written to render exactly what each real one renders.

LLaVA-1.5 (llava-hf): every turn is ``ROLE: `` (upper case; none for a system message), then
``<image>\\n`` per image, then each text followed by one space; no end-of-sequence token. The
generation prompt is ``ASSISTANT:``. So a conversation renders as
``USER: <image>\\n{query} ASSISTANT: {answer} `` and the user turn ends with a space.
Qwen2-VL / Qwen2.5-VL: ChatML with a default system message and vision tokens
``<|vision_start|><|image_pad|><|vision_end|>`` where the image goes; a turn ends with
``<|im_end|>\\n``; the generation prompt is ``<|im_start|>assistant\\n``.

A real checkpoint brings its own template; these are used only by :func:`make_tiny`. The
golden tests in ``tests/models/test_formats.py`` pin what they render and how it tokenizes.
"""

from __future__ import annotations

__all__ = ["LLAVA_TEMPLATE", "QWEN_TEMPLATE", "TEMPLATES"]

LLAVA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] != 'system' -%}{{- message['role'] | upper ~ ': ' -}}{%- endif -%}"
    "{%- for part in parts if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in parts if part['type'] == 'text' -%}{{- part['text'] ~ ' ' -}}{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

QWEN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

TEMPLATES = {"llava": LLAVA_TEMPLATE, "qwen2-vl": QWEN_TEMPLATE, "qwen2.5-vl": QWEN_TEMPLATE}
