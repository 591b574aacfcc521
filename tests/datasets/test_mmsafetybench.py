"""MM-SafetyBench from a small fixture in its release layout."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from l2s_data.datasets import MMSB_SCENARIOS, load_mmsafetybench
from l2s_data.datasets.mmsafetybench import reference_split
from l2s_data.errors import DataSourceError, ImageError


def test_every_scenario_parses_with_labels_and_sd_typo_images(mmsb_root):
    t = load_mmsafetybench(mmsb_root)
    assert t.errors is None
    m = t.memberships.to_pylist()
    assert len(m) == 13 * 3 and len(t) == 39
    assert Counter(r["category"] for r in m) == {s: 3 for s in MMSB_SCENARIOS}
    for r in m:
        assert r["label"] == ("defer" if r["category"][:2] in ("10", "11", "12") else "refuse")
        assert r["dataset"] == "mmsafetybench" and r["subset"] == "SD_TYPO"
        assert r["question_id"] == f"{r['category']}/{r['question_id'].split('/')[1]}"
    rec = [r for r in t.records() if r["question_id"] == "06-Fraud/2"][0]
    assert rec["query"] == "The bottom of the image shows a phrase of an activity (06-Fraud 2). List steps."
    assert rec["image_path"].endswith("imgs/06-Fraud/SD_TYPO/2.jpg")
    assert t.load_image(rec["sample_id"]).size == (16, 16)


def test_question_field_and_image_kind_are_options(mmsb_root):
    base = load_mmsafetybench(mmsb_root)
    q = load_mmsafetybench(mmsb_root, question_field="Question", image_kind="SD")
    rec = [r for r in q.records() if r["question_id"] == "06-Fraud/2"][0]
    assert rec["query"] == "How can someone do thing 2 of 06-Fraud?"
    assert rec["image_path"].endswith("imgs/06-Fraud/SD/2.jpg") and rec["subset"] == "SD"
    assert set(q.sample_ids).isdisjoint(base.sample_ids)
    with pytest.raises(DataSourceError, match="image_kind must be one of"):
        load_mmsafetybench(mmsb_root, image_kind="PHOTO")


def test_an_unknown_question_field_names_the_field_and_the_keys_there(mmsb_root):
    t = load_mmsafetybench(mmsb_root, question_field="Query")
    assert t.memberships.num_rows == 0 and t.errors.num_rows == 39
    assert "no field 'Query'" in t.errors.column("reason")[0].as_py()
    assert "Rephrased Question" in t.errors.column("reason")[0].as_py()


def test_reference_split_reproduces_numpys_legacy_shuffle():
    n = 1680
    got = reference_split(n)
    idx = np.arange(n)
    np.random.seed(21)
    np.random.shuffle(idx)  # what the reference code does
    assert {int(i) for i in idx[: int(n * 0.8)]} == {i for i, s in enumerate(got) if s == "train"}
    assert got.count("test") == n - int(n * 0.8)


def test_default_split_is_the_reference_one_over_file_order(mmsb_root):
    t = load_mmsafetybench(mmsb_root)
    expected = reference_split(39)
    order = [f"{s}/{q}" for s in MMSB_SCENARIOS for q in range(3)]
    got = {r["question_id"]: r["split"] for r in t.memberships.to_pylist()}
    assert [got[k] for k in order] == expected
    by_image = load_mmsafetybench(mmsb_root, split="by_image", test_fraction=0.25, seed=0)
    assert Counter(by_image.memberships.column("split").to_pylist())["test"] == round(0.25 * 39)


def test_a_missing_scenario_file_is_named_and_the_rest_loads(mmsb_root):
    (mmsb_root / "processed_questions" / "07-Sex.json").unlink()
    t = load_mmsafetybench(mmsb_root)
    assert t.memberships.num_rows == 36 and "07-Sex" not in t.memberships.column("category").to_pylist()
    err = t.errors.to_pylist()
    assert len(err) == 1 and err[0]["item"] == "07-Sex" and err[0]["source"].endswith("07-Sex.json")
    assert "scenario file" in err[0]["reason"] and "is missing" in err[0]["reason"]
    with pytest.raises(DataSourceError, match=r"07-Sex\.json.*is missing"):
        load_mmsafetybench(mmsb_root, strict=True)


def test_a_root_without_any_scenario_file_raises(tmp_path):
    (tmp_path / "processed_questions").mkdir()
    with pytest.raises(DataSourceError, match="no MM-SafetyBench scenario file could be read"):
        load_mmsafetybench(tmp_path)
    with pytest.raises(DataSourceError, match="does not exist"):
        load_mmsafetybench(tmp_path / "nowhere")


def test_missing_unreadable_images_and_empty_questions_are_quarantined(mmsb_root):
    (mmsb_root / "imgs" / "02-HateSpeech" / "SD_TYPO" / "1.jpg").unlink()
    (mmsb_root / "imgs" / "03-Malware_Generation" / "SD_TYPO" / "0.jpg").write_bytes(b"garbage")
    f = mmsb_root / "processed_questions" / "04-Physical_Harm.json"
    recs = json.loads(f.read_text())
    recs["2"]["Rephrased Question"] = "  "
    f.write_text(json.dumps(recs))
    t = load_mmsafetybench(mmsb_root)
    assert t.memberships.num_rows == 36
    reasons = {(e["source"].rsplit("/", 1)[-1], e["item"]): e["reason"] for e in t.errors.to_pylist()}
    assert "02-HateSpeech/1: image" in reasons[("02-HateSpeech.json", "1")]
    assert "does not exist" in reasons[("02-HateSpeech.json", "1")]
    assert "not a readable image" in reasons[("03-Malware_Generation.json", "0")]
    assert "query is empty" in reasons[("04-Physical_Harm.json", "2")]
    with pytest.raises(ImageError, match="02-HateSpeech/1"):
        load_mmsafetybench(mmsb_root, strict=True)


def test_an_id_that_escapes_the_root_is_refused(mmsb_root):
    f = mmsb_root / "processed_questions" / "01-Illegal_Activitiy.json"
    recs = json.loads(f.read_text())
    recs["../../../../../x"] = recs["0"]
    f.write_text(json.dumps(recs))
    t = load_mmsafetybench(mmsb_root)
    assert t.memberships.num_rows == 39
    assert "escapes the data set root" in t.errors.column("reason")[0].as_py()
