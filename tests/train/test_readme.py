"""The Python example of the training guide runs as written, on the store `l2s demo` builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "l2s_data" / "train" / "README.md"


@pytest.mark.slow
def test_the_training_guide_python_example_runs_on_the_demo_store(demo_copy, monkeypatch, capsys):
    monkeypatch.chdir(demo_copy.parent)  # a copy of the session's demo-out/: the example trains into it
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    # the config path is relative to the repository; this test runs in a scratch folder
    code = code.replace('"l2s_data/train/configs/', f'"{ROOT}/l2s_data/train/configs/')
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    run_id, cos = capsys.readouterr().out.split()[:2]
    assert run_id.startswith("tiny-llava-") and -1 <= float(cos) <= 1
    assert scope["meta"].input_layer == 2 and scope["v"].shape == (64,)
    assert (demo_copy / "train-runs" / run_id / "predictor.safetensors").is_file()
