"""The Python example of the evaluation README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "l2s_data" / "evaluate" / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "# Evaluation report: readme"
    n = int(out[-2].split()[0])
    assert n > 0 and n % 6 == 0  # none + prompt-only + two methods x two alphas, per sample
    assert (tmp_path / "report" / "report.html").is_file()
