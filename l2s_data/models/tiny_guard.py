"""A tiny random guard checkpoint, written offline: what the demo and the tests judge with.

    make_tiny_guard("checkpoints/tiny-guard")   # then GuardJudge.from_path(...) reads it

It is a Llama causal LM with "safe" and "unsafe" as whole tokens and a plain chat template, the
shape :class:`l2s_data.evaluate.judges.GuardJudge` expects of a real guard (Llama-Guard-3-8B).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from l2s_data.models.tiny import build_tokenizer

__all__ = ["make_tiny_guard"]

_GUARD_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tiny_guard(out_dir: str | os.PathLike, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """Write a tiny random Llama causal LM with "safe" and "unsafe" as whole tokens and a chat
    template, so the guard path runs offline. Its LM head is shrunk but for the two verdict rows, so
    that "safe" and "unsafe" carry most of the next-token probability, as with a real guard."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer("llava")
    tok.add_tokens(["unsafe", "safe"])
    tok.chat_template = _GUARD_TEMPLATE
    tok.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            # Every other token gets a small logit; "unsafe" and "safe" get opposite directions,
            # so P(unsafe) ~ sigmoid of a projection of the last hidden state.
            w = torch.randn(hidden_size)
            model.lm_head.weight.mul_(0.01)
            model.lm_head.weight[tok.convert_tokens_to_ids("unsafe")] = w
            model.lm_head.weight[tok.convert_tokens_to_ids("safe")] = -w
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
