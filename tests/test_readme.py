"""README.md's command sequences and Python example run as written.

The `l2s ...` lines of a ```bash block are run in order, in a scratch folder, through the CLI
(paths under ``l2s_data/`` are the repository's); the first session's commands and the Python
example read the store of the session's demo (``demo``), as the README's ``demo-out/``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2s_data.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def commands(block: str) -> list[list[str]]:
    """The commands of a shell block: comments dropped, ``\\`` continuations and quoted
    strings that span lines joined."""
    out, buf = [], ""
    for line in block.splitlines():
        buf += line + "\n"
        if line.rstrip().endswith("\\"):
            continue
        try:
            args = shlex.split(buf.replace("\\\n", " "), comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        if args:
            out.append(args)
        buf = ""
    assert not buf.strip(), f"unfinished command at the end of the block: {buf!r}"
    return out


def section_block(after: str, lang: str = "bash") -> str:
    """The first ```lang block of README.md after the line that starts with ``after``."""
    start = README.read_text().index(after)
    return re.search(rf"```{lang}\n(.*?)```", README.read_text()[start:], re.S).group(1)


def run_l2s(args: list[str]):
    assert args[0] == "l2s", f"the README block runs {args[0]!r}, not l2s"
    args = [str(ROOT / a) if a.startswith("l2s_data/") else a for a in args[1:]]
    res = CliRunner().invoke(app, args, terminal_width=80)
    assert res.exit_code == 0, f"l2s {shlex.join(args)} exited {res.exit_code}:\n{res.output}"
    return res


def test_the_block_parser_joins_continuations_and_multi_line_quotes():
    block = 'l2s a --b c   # note\nl2s sql --store s \\\n  "SELECT 1\n   FROM x"\n\nl2s d\n'
    assert commands(block) == [["l2s", "a", "--b", "c"], ["l2s", "sql", "--store", "s", "SELECT 1\n   FROM x"],
                               ["l2s", "d"]]


def test_the_readme_own_extraction_sequence_runs_and_uses_what_it_made(tmp_path, monkeypatch):
    """`l2s models make-tiny`, `l2s data make-synthetic`, then the config that reads both."""
    from l2s_data.store import Store

    monkeypatch.chdir(tmp_path)
    cmds = commands(section_block("Then run your own extraction"))
    assert [c[:2] for c in cmds][:3] == [["l2s", "models"], ["l2s", "data"], ["l2s", "extract"]]
    outputs = [" ".join(run_l2s(c).output.split()) for c in cmds]
    n = int(cmds[1][cmds[1].index("--n") + 1])
    made_model, made_data = Path(cmds[0][-1]), Path(cmds[1][4])
    extracts = [i for i, c in enumerate(cmds) if c[1] == "extract"]
    cfg_text = (ROOT / cmds[extracts[0]][2]).read_text()
    # the config reads exactly the model and the data set that the first two commands made
    assert f'path = "{made_model}"' in cfg_text and f'path = "{made_data}"' in cfg_text
    store_url = re.search(r'store = "([^"]+)"', cfg_text).group(1)
    ext = Store.open(tmp_path / store_url).sql("SELECT * FROM _extractions").to_pylist()
    # the first run computed every sample of the made data set, the second (the rerun) none
    assert sorted(r["samples_computed"] for r in ext) == [0, n] and len(extracts) == 3
    recipes = Store.open(tmp_path / store_url).sql("SELECT spec_json FROM recipes")["spec_json"].to_pylist()
    assert recipes and all("qwen2" in m.lower() for m in recipes)
    # the rerun is a no-op, as the comment says; the dry run computes nothing
    assert "nothing to compute" in outputs[extracts[-1]]
    sql_out = outputs[-1]
    assert all(v in sql_out for v in ("input", "pos", "neg", "p2s"))


@pytest.mark.slow
def test_the_readme_first_session_commands_run_on_the_demo_store(demo, monkeypatch):
    monkeypatch.chdir(demo.out.parent)
    cmds = commands(section_block("## A first session"))
    assert cmds and all(c[0] == "l2s" for c in cmds)
    outputs = [run_l2s(c).output for c in cmds]
    assert "Usage" in outputs[0]
    joined = "\n".join(outputs)
    assert "p2s" in joined  # the per-category query over the demo's p2s rows answered


@pytest.mark.slow
def test_the_readme_first_session_python_block_runs_on_the_demo_store(demo, monkeypatch):
    """README.md's Python example reads the store that `l2s demo` leaves in ./demo-out."""
    monkeypatch.chdir(demo.out.parent)
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    code = code.replace("num_workers=2", "num_workers=0")  # same data path, no worker start-up
    code = code.replace("    ...", "    seen.append((xb.shape, yb.shape))")
    scope: dict = {"seen": []}
    exec(compile(code, "README.md", "exec"), scope)
    train_rows = sum(s[0][0] for s in scope["seen"])
    assert train_rows > 0 and all(x[1] == y[1] for x, y in scope["seen"])


def test_every_repository_path_the_guides_name_exists():
    """A path in backticks that starts with a top-level folder of the repository names a real file
    or folder (the schemas live in ``schemas/``, not ``l2s_data/schemas``)."""
    top = ("l2s_data/", "schemas/", "jobs/", "cluster/", "benchmarks/", "tests/")
    guides = [README, *sorted((ROOT / "l2s_data").rglob("*.md")), *sorted((ROOT / "cluster").rglob("*.md"))]
    missing = []
    for md in guides:
        for path in re.findall(r"`([^`\s]+)`", md.read_text()):
            path = path.rstrip(":,.")
            if path.startswith(top) and not any(c in path for c in "<*{") and not (ROOT / path).exists():
                missing.append(f"{md.relative_to(ROOT)}: {path}")
    assert not missing, missing
