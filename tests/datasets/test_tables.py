"""Content ids, DatasetTables and the data set directory format."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from l2s_data.datasets import DatasetTables, content_id, make_synthetic, read_dataset, write_dataset
from l2s_data.errors import DataSourceError, ImageError
from l2s_data.schemas import MEMBERSHIPS, SAMPLES


def test_content_id_framing_is_pinned():
    # Golden values: changing the framing silently re-keys every stored activation.
    assert content_id(b"\x89PNG fake", "Is there a cat in the image?") == "65592de868006c19585cdf28df4ef1ac"
    assert content_id(b"", "") == "5c6ff3ce94dc50afe1800140d94055e1"
    img, q = b"abc", "query?"
    framed = b"l2s.sample.v1\n" + (3).to_bytes(8, "big") + img + (6).to_bytes(8, "big") + q.encode()
    assert content_id(img, q) == hashlib.sha256(framed).hexdigest()[:32]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.text(max_size=32), st.binary(max_size=64), st.text(max_size=32))
def test_content_id_is_stable_and_separates_different_inputs(img_a, q_a, img_b, q_b):
    a = content_id(img_a, q_a)
    assert a == content_id(bytes(img_a), str(q_a))
    assert len(a) == 32 and set(a) <= set("0123456789abcdef")
    if (img_a, q_a) != (img_b, q_b):
        assert a != content_id(img_b, q_b)


@given(st.binary(min_size=1, max_size=16), st.text(min_size=1, max_size=8))
def test_moving_bytes_between_image_and_query_changes_the_id(img, q):
    # Without length prefixes, (b"ab", "c") and (b"a", "bc") would hash alike.
    moved = img + q[:1].encode()
    assert content_id(img, q) != content_id(moved, q[1:])


def test_write_then_read_round_trips_tables_and_images(tmp_path):
    src = make_synthetic("synthetic-safety", tmp_path / "a", n=20, seed=3)
    copy = write_dataset(src, tmp_path / "b")  # relative images are copied along
    back = read_dataset(copy)
    assert back.samples.equals(src.samples) and back.memberships.equals(src.memberships)
    assert back.samples.schema.equals(SAMPLES, check_metadata=True)
    assert back.memberships.schema.equals(MEMBERSHIPS, check_metadata=True)
    sid = back.sample_ids[5]
    assert back.image_path(sid).read_bytes() == src.image_path(sid).read_bytes()
    assert back.image_path(sid).is_relative_to(copy.resolve())
    im = back.load_image(sid)
    assert im.mode == "RGB" and im.size == (192, 192)
    assert back.info["source"] == "synthetic-safety" and back.info["samples"] == 20
    assert back.errors is None and not (copy / "errors.parquet").exists()


def _one_sample_tables(root, image_path, *, data=b"", query="What is this?"):
    sid = content_id(data, query)
    samples = pa.Table.from_pylist(
        [{"sample_id": sid, "query": query, "image_path": image_path, "image_sha256": "0" * 64,
          "width": 1, "height": 1}], schema=SAMPLES)
    members = pa.Table.from_pylist(
        [{"dataset": "d", "subset": "s", "question_id": "1", "sample_id": sid, "category": "c",
          "label": None, "split": "train"}], schema=MEMBERSHIPS)
    return DatasetTables(samples, members, root), sid


def test_an_image_path_escaping_the_root_is_refused(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    tables, sid = _one_sample_tables(root, "../secret.png")
    with pytest.raises(ImageError, match=rf"sample {sid}.*escapes the data set root"):
        tables.image_path(sid)
    with pytest.raises(ImageError, match="escapes"):
        tables.load_image(sid)
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    tables, sid = _one_sample_tables(root, "link.png")
    with pytest.raises(ImageError, match="escapes"):
        tables.image_path(sid)


def test_absolute_image_paths_are_used_as_they_are(tmp_path):
    img = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 3), (1, 2, 3)).save(img)
    tables, sid = _one_sample_tables(tmp_path / "ds", str(img))
    assert tables.image_path(sid) == img
    assert tables.load_image(sid).size == (4, 3)


def test_copy_images_makes_a_self_contained_directory(tmp_path):
    img = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 3), (1, 2, 3)).save(img)
    data = img.read_bytes()
    tables, sid = _one_sample_tables(tmp_path, str(img), data=data)
    out = write_dataset(tables, tmp_path / "out", copy_images=True)
    back = read_dataset(out)
    rel = back.samples.column("image_path")[0].as_py()
    assert rel.startswith("images/") and back.image_path(sid).read_bytes() == data


def test_missing_and_unreadable_images_name_the_sample(tmp_path):
    tables, sid = _one_sample_tables(tmp_path, "absent.png")
    with pytest.raises(ImageError, match=rf"sample {sid}: image .*absent.png.* does not exist"):
        tables.load_image(sid)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    tables, sid = _one_sample_tables(tmp_path, "broken.png")
    with pytest.raises(ImageError, match=rf"sample {sid}: image .*broken.png.* cannot be read"):
        tables.load_image(sid)


def test_unknown_sample_ids_and_duplicate_ids_are_refused(tmp_path):
    tables, sid = _one_sample_tables(tmp_path, "a.png")
    with pytest.raises(DataSourceError, match="'nope' is not in this data set"):
        tables.image_path("nope")
    dup = pa.concat_tables([tables.samples, tables.samples])
    with pytest.raises(DataSourceError, match="duplicate sample_id"):
        DatasetTables(dup, tables.memberships, tmp_path)
    with pytest.raises(DataSourceError, match="lacks column"):
        DatasetTables(tables.samples.drop_columns(["width"]), tables.memberships, tmp_path)


def test_read_dataset_names_what_is_missing(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "half" / "samples.parquet")
    with pytest.raises(DataSourceError, match="memberships.parquet"):
        read_dataset(tmp_path / "half")


def test_select_keeps_only_the_samples_its_memberships_point_at(tmp_path):
    t = make_synthetic("synthetic-safety", tmp_path, n=26, seed=0)
    test = t.select(split="test")
    assert 0 < len(test) < len(t)
    assert set(test.memberships.column("split").to_pylist()) == {"test"}
    assert set(test.sample_ids) == set(test.memberships.column("sample_id").to_pylist())
    legal = t.select(category="10-Legal_Opinion")
    assert legal.memberships.num_rows == 2 and set(legal.memberships.column("label").to_pylist()) == {"defer"}
    rec = t.records()[0]
    assert rec["query"] == t.query(rec["sample_id"]) and rec["image_path"].startswith("images/")


def test_pngs_decode_to_the_size_and_pixels_the_samples_table_records(tmp_path):
    t = make_synthetic("synthetic-safety", tmp_path, n=3, seed=0)
    size = {r["sample_id"]: (r["width"], r["height"]) for r in t.samples.to_pylist()}
    for sid in t.sample_ids:
        img = Image.open(io.BytesIO(t.image_path(sid).read_bytes()))
        assert img.format == "PNG"
        img.load()  # decodes every pixel: a truncated or corrupt file raises here
        assert img.size == size[sid]
        lo, hi = img.convert("L").getextrema()
        assert lo < hi  # a rendered image, not a blank canvas
