"""`l2s data ...` end to end through the real CLI app."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.datasets import read_dataset

runner = CliRunner()


def _ok(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_make_synthetic_writes_a_readable_data_set(tmp_path):
    out = _ok(["data", "make-synthetic", "synthetic-safety", str(tmp_path / "ss"), "--n", "13", "--seed", "2"])
    assert "13 samples, 13 memberships" in out and "no errors" in out
    t = read_dataset(tmp_path / "ss")
    assert len(t) == 13 and t.info["seed"] == 2
    out = _ok(["data", "make-synthetic", "shapes-pope", str(tmp_path / "sp"), "--n", "5"])
    assert "adversarial" in out
    assert "shapes-pope" in _ok(["data", "info", str(tmp_path / "sp")])


def test_import_pope_reports_quarantined_lines(tmp_path):
    q = tmp_path / "q"
    q.mkdir()
    lines = [
        json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}),
        "{oops",
    ]
    (q / "coco_pope_random.json").write_text("\n".join(lines))
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (4, 4)).save(img / "a.jpg", format="PNG")
    out = _ok(["data", "import", "pope", "--questions", str(q), "--images", str(img), "--subsets", "random",
               str(tmp_path / "out")])
    assert "1 samples, 1 memberships" in out and "1 item(s) quarantined" in out and "line 2" in out
    assert (tmp_path / "out" / "errors.parquet").is_file()
    r = runner.invoke(app, ["data", "import", "pope", "--questions", str(q), "--images", str(img),
                            "--subsets", "random", "--strict", str(tmp_path / "out2")])
    assert r.exit_code == 1 and "line 2" in r.output and not (tmp_path / "out2").exists()


def test_import_mmsafetybench_with_options(mmsb_root, tmp_path):
    out = _ok(["data", "import", "mmsafetybench", str(mmsb_root), str(tmp_path / "m"),
               "--question-field", "Question", "--image-kind", "TYPO", "--copy-images"])
    assert "39 samples" in out and "10-Legal_Opinion" in out
    t = read_dataset(tmp_path / "m")
    assert set(t.memberships.column("subset").to_pylist()) == {"TYPO"}
    assert all(p.startswith("images/") for p in t.samples.column("image_path").to_pylist())
    assert t.load_image(t.sample_ids[0]).size == (16, 16)
    r = runner.invoke(app, ["data", "import", "mmsafetybench", str(tmp_path / "nowhere"), str(tmp_path / "x")])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_behaviors_and_presets_list_and_show():
    out = _ok(["data", "behaviors"])
    for name in ("safety-llava", "safety-qwen", "safety-agnostic", "pope-yes-no"):
        assert name in out
    assert "Expert" in _ok(["data", "behaviors", "safety-llava"])
    spec = json.loads(_ok(["data", "behaviors", "pope-yes-no", "--json"]))
    assert spec["pairs"][0]["category"] == "pope"
    out = _ok(["data", "presets"])
    assert "reference-llava" in out and "reference-qwen" in out
    assert "sequence_last-1" in _ok(["data", "presets", "reference-qwen"])
    assert json.loads(_ok(["data", "presets", "reference-llava", "--json"]))["safety"]["alpha"] == 2.2
    r = runner.invoke(app, ["data", "presets", "nope"])
    assert r.exit_code == 1 and "reference-llava" in r.output


def test_help_texts_explain_the_commands():
    assert "deterministic" in _ok(["data", "make-synthetic", "--help"])
    assert "--question-field" in _ok(["data", "import", "mmsafetybench", "--help"])
    assert "--images" in _ok(["data", "import", "pope", "--help"])
