"""The fingerprint changes when the weights, the template or the dtype change, and only then."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from l2s_data.models import load_adapter


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_fingerprint_is_stable_across_loads_paths_and_processes(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("qwen2-vl")
    first = load_adapter(path)
    assert load_adapter(path).fingerprint() == first.fingerprint()
    assert load_adapter(_copy(path, tmp_path / "moved")).fingerprint() == first.fingerprint()
    code = f"from l2s_data.models import load_adapter; print(load_adapter({str(path)!r}).fingerprint())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip().splitlines()[-1] == first.fingerprint()


def test_fingerprint_changes_with_the_weights_only(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("llava")
    base = load_adapter(path)
    edited = _copy(path, tmp_path / "edited")
    tensors = load_file(edited / "model.safetensors")
    name = next(k for k in sorted(tensors) if "layers.2.mlp" in k)
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, edited / "model.safetensors", metadata={"format": "pt"})
    changed = load_adapter(edited)
    assert changed.fingerprint() != base.fingerprint()
    a, b = base.fingerprint_spec(), changed.fingerprint_spec()
    assert a["weights"] != b["weights"]
    assert {k: v for k, v in a.items() if k != "weights"} == {k: v for k, v in b.items() if k != "weights"}


def test_fingerprint_changes_with_the_chat_template_only(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("llava")
    base = load_adapter(path)
    edited = _copy(path, tmp_path / "template")
    template = edited / "chat_template.jinja"
    template.write_text(template.read_text().replace("ASSISTANT:", "ASSISTANT :"))
    changed = load_adapter(edited)
    assert changed.fingerprint() != base.fingerprint()
    a, b = base.fingerprint_spec(), changed.fingerprint_spec()
    assert a["processor"]["chat_template"] != b["processor"]["chat_template"]
    assert a["weights"] == b["weights"] and a["dtype"] == b["dtype"]


def test_fingerprint_changes_with_the_compute_dtype_and_attention_implementation(tiny_checkpoint):
    path = tiny_checkpoint("llava")
    fp32 = load_adapter(path)
    bf16 = load_adapter(path, dtype="bfloat16")
    sdpa = load_adapter(path, attn_implementation="sdpa")
    assert len({fp32.fingerprint(), bf16.fingerprint(), sdpa.fingerprint()}) == 3
    # The weights digest describes the checkpoint, not how it was loaded.
    assert fp32.fingerprint_spec()["weights"] == bf16.fingerprint_spec()["weights"]
    assert bf16.fingerprint_spec()["dtype"] == "bfloat16"


def test_state_dict_fallback_digest_sees_an_in_memory_change(tiny_checkpoint):
    from l2s_data.models.fingerprint import weights_digest

    adapter = load_adapter(tiny_checkpoint("llava"))
    method, before = weights_digest(None, adapter.model)
    assert method == "state-dict-sampled"
    layer = adapter.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        layer.add_(1e-3)
    try:
        assert weights_digest(None, adapter.model)[1] != before
    finally:
        with torch.no_grad():
            layer.sub_(1e-3)


def test_fingerprint_ignores_how_files_were_written_but_not_what_the_config_computes(tiny_checkpoint, tmp_path):
    import json

    path = tiny_checkpoint("qwen2-vl")
    base = load_adapter(path).fingerprint()
    cosmetic = _copy(path, tmp_path / "cosmetic")
    cfg = json.loads((cosmetic / "config.json").read_text())
    cfg["transformers_version"] = "5.17.0"
    (cosmetic / "config.json").write_text(json.dumps(cfg, indent=4))
    proc = json.loads((cosmetic / "processor_config.json").read_text())
    proc["processor_class"] = "Qwen2VLProcessor"  # the stock class name of a real checkpoint
    (cosmetic / "processor_config.json").write_text(json.dumps(proc))
    assert load_adapter(cosmetic).fingerprint() == base
    numeric = _copy(path, tmp_path / "numeric")
    cfg = json.loads((numeric / "config.json").read_text())
    cfg["text_config"]["rms_norm_eps"] = 1e-3
    (numeric / "config.json").write_text(json.dumps(cfg))
    assert load_adapter(numeric).fingerprint() != base
