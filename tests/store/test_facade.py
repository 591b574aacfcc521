"""The store guide's "five verbs" table is the contract of the ``Store`` facade: it names
exactly the facade's public names, and each example of it uses only those names."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from l2s_data.errors import KeyNotFoundError, SchemaMismatchError
from l2s_data.store import Store

from .conftest import tables

GUIDE = Path(__file__).resolve().parents[2] / "l2s_data" / "store" / "README.md"
VERBS = ("open", "write", "sql", "read / stream", "maintain")


def _verb_table() -> list[tuple[str, str, str]]:
    section = GUIDE.read_text().split("### The five verbs", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in VERBS:
            name = re.fullmatch(r"`(\w+)`", cells[1])
            assert name, f"the name cell {cells[1]!r} of the five-verb table holds one `name`"
            rows.append((cells[0], name.group(1), cells[2]))
    return rows


def _public_names(store: Store) -> set[str]:
    return {n for n in dir(store) if not n.startswith("_")}


def test_the_guide_names_exactly_the_facades_public_names(tmp_path):
    rows = _verb_table()
    names = [n for _, n, _ in rows]
    assert len(names) == len(set(names)), "each public name once in the table"
    assert set(names) == _public_names(Store.open(tmp_path / "s", create=True))
    assert [v for v in VERBS if v in {r[0] for r in rows}] == list(VERBS), "every verb has a row"
    assert len(names) <= 12, "a few verbs: the rest belongs on store.admin"


def test_each_example_of_the_table_uses_its_own_name():
    for verb, name, example in _verb_table():
        assert re.search(rf"\b{name}\b", example), f"{verb} / {name}: its example {example!r} does not use it"


def test_admin_holds_the_whole_store_operations_and_nothing_private(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    ops = {n for n in dir(store.admin) if not n.startswith("_") and callable(getattr(store.admin, n))}
    assert ops == {"info", "verify", "gc", "compact", "delete_recipe", "export_catalog", "migrate"}
    assert store.admin.info().rows == 0 and store.admin.verify() == []


def test_put_takes_one_table_and_names_the_verb_for_the_others(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    with pytest.raises(KeyNotFoundError, match="put_recipe"):
        store.put("recipes", [{"recipe_id": "x"}])
    with pytest.raises(KeyNotFoundError, match="shard_writer"):
        store.put("manifests", [])
    with pytest.raises(SchemaMismatchError, match="memberships= goes with the samples"):
        store.put("runs", [], memberships=[])


def test_samples_and_memberships_are_checked_before_either_is_written(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    samples, memberships = tables(["a", "b"])
    bad = memberships.append_column("oops", pa.array([1, 2]))
    with pytest.raises(SchemaMismatchError, match="memberships"):
        store.put("samples", samples, memberships=bad)
    assert store.sql("SELECT count(*) AS n FROM samples")["n"].to_pylist() == [0]
    assert store.put("samples", samples, memberships=memberships) is True
    assert store.sql("SELECT count(*) AS n FROM memberships")["n"].to_pylist() == [2]


def test_one_recipe_lookup_by_id_or_name(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    rid = store.put_recipe({"layers": [1, 2]}, name="tiny")
    assert store.recipe("tiny") == store.recipe(rid)
    r = store.recipe(rid)
    assert (r.id, r.spec, r.names) == (rid, {"layers": [1, 2]}, ("tiny",))
    with pytest.raises(KeyNotFoundError, match="neither a recipe id nor a name"):
        store.recipe("nope")
