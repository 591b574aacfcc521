"""Table parts are read once per process: a shard writer no longer parses every recipe part twice,
and a part created again (a recipe registered after its delete) is read afresh."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from l2s_data.errors import KeyNotFoundError
from l2s_data.store import Store, StoredRecipe
from l2s_data.store.contract import parquet_bytes

from .conftest import rows, sample_ids

KEY = ("p2s", "completion_last", 2)


def _count_reads(store: Store, monkeypatch) -> list[str]:
    """The table parts ``store`` reads from here on (its backend's ``read_bytes`` calls)."""
    backend = store.admin.backend
    seen: list[str] = []
    real = backend.read_bytes

    def counted(rel, *a, **k):
        seen.append(rel)
        return real(rel, *a, **k)

    monkeypatch.setattr(backend, "read_bytes", counted)
    return seen


def test_shard_writers_read_each_recipe_part_once(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"r": "a"}, name="a")
    for k in range(5):
        store.put_recipe({"r": f"other-{k}"}, name=f"other-{k}")
    reads = _count_reads(store, monkeypatch)
    for i in range(4):
        with store.shard_writer(f"a-{i}", rid, sample_ids(2, prefix=f"a{i}-")) as w:
            w.write(*KEY, rows(2, 3, i), "float32")
        assert w.won
    recipe_reads = [r for r in reads if r.startswith("recipes/")]
    # six parts, each read once (the old code read all six twice per writer: 48 reads)
    assert sorted(recipe_reads) == sorted(set(recipe_reads)) and len(recipe_reads) <= 6
    assert store.recipe("a").id == rid


def test_a_recipe_deleted_then_registered_again_is_seen_each_time(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"r": "a"}, name="a")
    assert store.recipe("a").id == rid
    store.admin.delete_recipe("a", force=True)
    with pytest.raises(KeyNotFoundError):
        store.recipe("a")  # gone: not served from the part read before
    assert store.put_recipe({"r": "a"}, name="a") == rid
    assert store.recipe("a") == StoredRecipe(rid, {"r": "a"}, ("a",))


def test_a_part_written_again_with_other_bytes_is_read_afresh(tmp_path):
    """The same name, other bytes and another stamp (a new file): never the rows read before."""
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"r": "a"}, name="a")
    assert store.recipe("a").names == ("a",)
    [part] = [p for p in (tmp_path / "s" / "recipes").iterdir() if p.suffix == ".parquet"]
    t = pq.read_table(part)
    renamed = t.set_column(t.schema.get_field_index("name"), "name", pa.array(["b"], pa.string()))
    part.unlink()
    part.write_bytes(parquet_bytes(renamed))
    assert store.recipe(rid).names == ("b",)
    with pytest.raises(KeyNotFoundError):
        store.recipe("a")
