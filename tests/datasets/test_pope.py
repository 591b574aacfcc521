"""POPE from its official question files, with placeholder images under the COCO names."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict

import pytest
from PIL import Image

from l2s_data.datasets import load_pope, read_dataset, write_dataset
from l2s_data.datasets.pope import read_pope_file
from l2s_data.errors import DataSourceError, ImageError


@pytest.fixture(scope="module")
def pope(pope_dir, coco_images):
    return load_pope(pope_dir, coco_images, seed=0, test_fraction=0.2)


OFFICIAL_SHA256 = {
    "coco_pope_adversarial.json": "420b3407db1fa9f1187a805dca41cb7b97fd91504e6c2179706188c107fb8ef8",
    "coco_pope_popular.json": "72c1a8ad45d0c13514f5f22598261df41d3b533854d29682e924db50ed8aa753",
    "coco_pope_random.json": "ac25245170b975a5bdf9080b23fd431dfe6be458bc038259c1f4f09a6bef7994",
}


def test_the_question_files_are_the_official_ones(pope_dir):
    for name, sha in OFFICIAL_SHA256.items():
        assert hashlib.sha256((pope_dir / name).read_bytes()).hexdigest() == sha, name


def test_all_9000_questions_parse_into_5127_distinct_samples(pope):
    assert pope.errors is None
    assert pope.memberships.num_rows == 9000
    assert len(pope) == 5127
    m = pope.memberships.to_pylist()
    assert Counter(r["subset"] for r in m) == {"random": 3000, "popular": 3000, "adversarial": 3000}
    assert Counter(r["label"] for r in m) == {"yes": 4500, "no": 4500}
    assert {r["category"] for r in m} == {"pope"} and {r["dataset"] for r in m} == {"pope"}
    assert len(set(pope.samples.column("image_sha256").to_pylist())) == 500


def test_no_image_is_in_both_splits(pope):
    image_of = dict(zip(pope.samples.column("sample_id").to_pylist(), pope.samples.column("image_sha256").to_pylist()))
    splits = defaultdict(set)
    for r in pope.memberships.to_pylist():
        splits[image_of[r["sample_id"]]].add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    test_images = sum(1 for s in splits.values() if s == {"test"})
    assert test_images == 100  # 20% of 500 images


def test_split_depends_on_the_seed_only(pope_dir, coco_images, pope):
    again = load_pope(pope_dir, coco_images, seed=0, test_fraction=0.2)
    assert again.memberships.equals(pope.memberships)
    other = load_pope(pope_dir, coco_images, seed=1, test_fraction=0.2)
    assert other.memberships.column("split") != pope.memberships.column("split")
    assert other.samples.equals(pope.samples)  # ids do not depend on the split


def test_a_membership_keeps_the_files_question_id_and_label(pope, pope_dir):
    first = json.loads((pope_dir / "coco_pope_adversarial.json").read_text().splitlines()[1])
    row = [r for r in pope.records() if r["subset"] == "adversarial" and r["question_id"] == str(first["question_id"])][0]
    assert row["query"] == first["text"] and row["label"] == first["label"]
    assert row["image_path"].endswith(first["image"])


def test_written_pope_points_at_the_users_image_folder(pope, tmp_path, coco_images):
    out = write_dataset(pope, tmp_path / "pope")
    back = read_dataset(out)
    sid = back.sample_ids[0]
    assert back.image_path(sid).parent == coco_images.resolve()
    assert back.load_image(sid).size == (8, 8)
    assert not (out / "images").exists()  # 500 COCO images are not copied unless asked


# ------------------------------------------------------------------ bad input


def _mini(tmp_path, lines, images=("a.jpg", "b.jpg")):
    q = tmp_path / "q"
    q.mkdir()
    (q / "coco_pope_random.json").write_text("\n".join(lines) + "\n")
    img = tmp_path / "img"
    img.mkdir()
    for i, n in enumerate(images):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(img / n, format="PNG")
    return q, img


def _line(qid, image="a.jpg", text="Is there a cat in the image?", label="yes"):
    return json.dumps({"question_id": qid, "image": image, "text": text, "label": label})


GOOD = [_line(1), _line(2, "b.jpg", label="no")]


@pytest.mark.parametrize(
    "bad, match",
    [
        ("{not json", "not a JSON object"),
        ('{"question_id": 3, "image": "a.jpg", "text": "Is there?"}', r"missing key\(s\) \['label'\]"),
        (_line(3, label="maybe"), "label must be 'yes' or 'no', got 'maybe'"),
        ("[1, 2]", "expected a JSON object"),
        (_line(3, text="   "), "query is empty"),
    ],
)
def test_a_malformed_line_names_the_file_and_line_and_the_rest_loads(tmp_path, bad, match):
    q, img = _mini(tmp_path, [GOOD[0], bad, GOOD[1]])
    t = load_pope(q, img, subsets=["random"])
    assert t.memberships.num_rows == 2 and len(t) == 2
    err = t.errors.to_pylist()
    assert len(err) == 1
    assert err[0]["source"].endswith("coco_pope_random.json") and err[0]["item"] == "line 2"
    assert "coco_pope_random.json line 2" in err[0]["reason"]
    with pytest.raises(DataSourceError, match=rf"coco_pope_random.json line 2.*{match}"):
        load_pope(q, img, subsets=["random"], strict=True)
    with pytest.raises(DataSourceError, match=match):
        read_pope_file(q / "coco_pope_random.json")


def test_a_missing_or_unreadable_image_is_quarantined_with_the_line(tmp_path):
    q, img = _mini(tmp_path, [*GOOD, _line(3, "gone.jpg"), _line(4, "broken.jpg")])
    (img / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    t = load_pope(q, img, subsets=["random"])
    assert t.memberships.num_rows == 2
    reasons = {e["item"]: e["reason"] for e in t.errors.to_pylist()}
    assert "gone.jpg" in reasons["line 3 (question 3, image gone.jpg)"] and "does not exist" in reasons["line 3 (question 3, image gone.jpg)"]
    assert "not a readable image" in reasons["line 4 (question 4, image broken.jpg)"]
    with pytest.raises(ImageError, match="line 3 .*gone.jpg.* does not exist"):
        load_pope(q, img, subsets=["random"], strict=True)


def test_an_image_escaping_the_image_folder_is_refused(tmp_path):
    q, img = _mini(tmp_path, [*GOOD, _line(3, "../outside.jpg")])
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.jpg", format="PNG")
    t = load_pope(q, img, subsets=["random"])
    assert t.memberships.num_rows == 2
    assert "escapes the data set root" in t.errors.column("reason")[0].as_py()
    with pytest.raises(ImageError, match="coco_pope_random.json line 3.*'../outside.jpg' escapes"):
        load_pope(q, img, subsets=["random"], strict=True)


def test_a_repeated_question_id_is_quarantined(tmp_path):
    q, img = _mini(tmp_path, [*GOOD, _line(1, "b.jpg", text="Is there a dog in the image?")])
    t = load_pope(q, img, subsets=["random"])
    assert t.memberships.num_rows == 2 and "appears twice" in t.errors.column("reason")[0].as_py()


def test_missing_files_and_folders_are_named(tmp_path, pope_dir):
    q, img = _mini(tmp_path, GOOD)
    with pytest.raises(DataSourceError, match="POPE subset 'popular': no coco_pope_popular.json"):
        load_pope(q, img)
    with pytest.raises(DataSourceError, match="image folder .*nowhere.* does not exist"):
        load_pope(q, tmp_path / "nowhere")
    one = load_pope(q / "coco_pope_random.json", img)  # a single file works too
    assert one.memberships.column("subset").to_pylist() == ["random", "random"]
    shutil.rmtree(img)
    img.mkdir()
    empty = load_pope(q, img, subsets=["random"])
    assert len(empty) == 0 and empty.errors.num_rows == 2
