"""The Python example in the store's README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "l2s_data" / "store" / "README.md"


def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("True\n") and "(5, 64)" in out
    assert (tmp_path / "demo-store" / "manifests" / "s-000.parquet").exists()
