"""`l2s models make-tiny` and `l2s models info` through the real CLI app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from l2s_data.cli import app

runner = CliRunner()


def test_make_tiny_then_info_reports_family_layers_hidden_size_and_fingerprint(tmp_path, tiny_adapter):
    out = tmp_path / "tiny"
    result = runner.invoke(app, ["models", "make-tiny", "qwen2-vl", str(out), "--layers", "3", "--hidden-size", "32",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "chat_template.jinja").is_file()
    result = runner.invoke(app, ["models", "info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["family"], info["num_layers"], info["hidden_size"]) == ("qwen2-vl", 3, 32)
    assert len(info["fingerprint"]) == 64
    table = runner.invoke(app, ["models", "info", str(out)])
    assert table.exit_code == 0 and info["fingerprint"][:16] in table.stdout


def test_info_on_a_directory_without_a_model_fails_with_a_clear_message(tmp_path):
    result = runner.invoke(app, ["models", "info", str(tmp_path)])
    assert result.exit_code == 1
    assert "no config.json" in result.output.replace("\n", " ")


def test_make_tiny_rejects_an_unknown_family(tmp_path):
    result = runner.invoke(app, ["models", "make-tiny", "gpt2", str(tmp_path / "x")])
    assert result.exit_code != 0


def test_a_path_with_brackets_and_past_the_terminal_width_is_printed_whole(tmp_path):
    # Paths and ids are data: never read as markup, never wrapped (a wrapped path cannot be
    # copied; "[red]" would vanish as a style).
    out = tmp_path / "[red]models" / ("deep-" * 20) / "tiny"
    result = runner.invoke(app, ["models", "make-tiny", "llava", str(out), "--layers", "2", "--hidden-size", "16"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint to {out} (hidden 16" in result.stdout
