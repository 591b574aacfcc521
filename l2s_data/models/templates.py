"""Chat templates of the tiny checkpoints, written to reproduce each real family's format.

LLaVA-1.5 (llava-hf):   ``USER: <image>\\n{text} ASSISTANT: {answer}</s>``; the generation
prompt is ``ASSISTANT:``; a system message is plain text before ``USER:``.
Qwen2-VL / Qwen2.5-VL:  ChatML with a default system message and vision tokens
``<|vision_start|><|image_pad|><|vision_end|>`` where the image goes.

A real checkpoint brings its own template; these are used only by :func:`make_tiny`.
"""

from __future__ import annotations

__all__ = ["LLAVA_TEMPLATE", "QWEN_TEMPLATE", "TEMPLATES"]

LLAVA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- texts | join(' ') + ' ' -}}"
    "{%- else -%}"
    "{{- message['role'] | upper + ': ' -}}"
    "{%- for _ in range(n_images) -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{{- texts | join(' ') -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- else -%}{{- ' ' -}}{%- endif -%}"
    "{%- endif -%}"
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
