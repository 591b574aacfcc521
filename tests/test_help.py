"""Help texts say what the commands do, and console tables fit 80 columns without cutting a name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.cli._common import console

ROOT = Path(__file__).resolve().parents[1]


def _help(*cmd: str) -> str:
    res = CliRunner().invoke(app, [*cmd, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.replace("│", " ").split())


def test_sql_help_lists_every_view_of_the_catalog():
    views = re.findall(r"CREATE VIEW (\w+)", (ROOT / "schemas" / "catalog.sql").read_text())
    assert "extractions" in views
    text = _help("sql")
    assert [v for v in views if not re.search(rf"\b{v}\b", text)] == []


def test_demo_help_names_every_stage_the_demo_runs():
    text = _help("demo").lower()
    for stage in ("checkpoint", "synthetic-safety", "extraction", "nothing to compute", "behaviour-agnostic",
                  "trained", "evaluated", "report"):
        assert stage in text, stage


@pytest.fixture
def narrow_console(monkeypatch):
    """The l2s console at 80 columns, as on a default terminal."""
    monkeypatch.setattr(console, "width", 80)
    return console


def test_the_extract_dry_run_table_fits_80_columns_with_every_name_whole(narrow_console, tiny_checkpoint, tmp_path):
    from l2s_data.datasets import make_synthetic

    make_synthetic("synthetic-safety", tmp_path / "data", n=13)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\npath = "{tiny_checkpoint("llava")}"\n[data]\npath = "{tmp_path / "data"}"\n'
                   f'[behavior]\nbehavior = "safety-llava"\n'
                   f'[recipe]\nviews = ["input", "pos", "neg", "p2s"]\nlayers = "all"\n'
                   f'[run]\nstore = "{tmp_path / "store"}"\n')
    res = CliRunner().invoke(app, ["extract", str(cfg), "--dry-run", "--no-calibrate"])
    assert res.exit_code == 0, res.output
    table = [line for line in res.output.splitlines() if line.startswith(("┏", "┃", "┡", "│", "└"))]
    assert table and max(len(line) for line in table) <= 80
    assert "…" not in res.output
    assert f"dry run: {cfg} -> {tmp_path / 'store'}" in res.output  # the title's paths are whole, on one line
    cells = " ".join(res.output.split())
    for name in ("recipe", "input", "pair", "views", "positions", "layers", "samples", "missing samples",
                 "missing keys", "bytes", "pos,neg,p2s", "prompt_last", "completion_last"):
        assert name in cells, name


def test_serve_help_names_the_time_it_waits_for_the_deletion():
    from l2s_data.serve.stopping import STOP_TIMEOUT_S

    assert f"waiting at most {STOP_TIMEOUT_S:g} s for Ray Serve to confirm it" in _help("serve")
