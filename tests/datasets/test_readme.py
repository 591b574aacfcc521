"""The Python examples of the data and behavior READMEs run as written."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "l2s_data"


@pytest.mark.parametrize("readme", ["datasets/README.md", "behaviors/README.md"])
def test_readme_python_blocks_run(readme, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' mkdtemp() folders go to tmp_path
    text = (PKG / readme).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{readme} has no python example"
    for code in blocks:
        exec(compile(code, readme, "exec"), {})
