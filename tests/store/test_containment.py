"""The store touches only what it wrote: links under shards/ are never followed, stray entries
are reported and kept, and an entry without a record of its writer is never "infinitely old".

Each case was reproduced against the previous store: gc deleted the contents of a folder
that a symlinked shard folder pointed to (and then stopped with a traceback), deleted files
beside a committed attempt moved to another disk and linked back, crashed on a stray file in an
uncommitted shard folder and deleted one in a committed shard folder; the loader and ``verify``
read and served a symlinked attempt folder or chunk file pointing outside the store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.errors import OutsideStoreError, StoreError
from l2s_data.store import Key, Store

from .conftest import sample_ids, write_shard

KEY = ("p2s", "completion_last", 2)
ATTEMPT_LIKE = "0123456789abcdef0123456789abcdef"


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (links not followed) and its bytes: what must stay untouched."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def _outside(tmp_path: Path) -> Path:
    """A folder outside the store, with subfolders named like attempts and unrelated files."""
    out = tmp_path / "outside"
    (out / ATTEMPT_LIKE / "p2s.completion_last.L2" / "c" / "0").mkdir(parents=True)
    (out / ATTEMPT_LIKE / "p2s.completion_last.L2" / "c" / "0" / "0").write_bytes(b"precious")
    (out / "photos").mkdir()
    (out / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not a chunk")
    (out / "notes.txt").write_text("keep me")
    return out


def _committed(store: Store, shard: str = "s-000", n: int = 8, seed: int = 0) -> tuple[str, list[str], np.ndarray]:
    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(n, prefix=f"{shard}-")
    data = write_shard(store, shard, rid, ids, seed=seed)[KEY]
    return rid, ids, data


def _attempt_dir(store: Store, shard: str) -> Path:
    return Path(store.url) / "shards" / shard / store.snapshot().shards[shard]


def _epoch(store: Store, rid: str) -> np.ndarray:
    ds = store.columns([Key(rid, *KEY)], batch_size=4, shuffle=False, in_memory=False)
    return np.concatenate([np.asarray(b[0]) for b in ds])


# -- symbolic links as shard folders -------------------------------------------------------------


@pytest.mark.parametrize("grace", [3600.0, 0.0])
def test_gc_never_deletes_through_a_symlinked_shard_folder(store, tmp_path, grace):
    _committed(store)
    out = _outside(tmp_path)
    before = _tree(out)
    (Path(store.url) / "shards" / "s-999").symlink_to(out, target_is_directory=True)

    r = store.admin.gc(grace_s=grace)

    assert _tree(out) == before  # nothing outside the store was touched
    assert (Path(store.url) / "shards" / "s-999").is_symlink()  # nor the link itself
    assert r.removed == [] and any("shards/s-999" in k and "symbolic link" in k for k in r.kept_unknown)


def test_a_committed_shard_moved_to_another_disk_and_linked_back_is_refused_not_deleted(store, tmp_path):
    rid, ids, _ = _committed(store, "s-000")
    _committed(store, "s-001", seed=1)
    shard = Path(store.url) / "shards" / "s-000"
    moved = tmp_path / "other-disk" / "s-000"
    moved.parent.mkdir()
    shutil.move(str(shard), str(moved))
    (moved / "unrelated.txt").write_text("beside the attempt")
    (moved / "old-run").mkdir()
    (moved / "old-run" / "weights.bin").write_bytes(b"w" * 10)
    shard.symlink_to(moved, target_is_directory=True)
    before = _tree(moved)

    r = store.admin.gc(grace_s=0)
    assert _tree(moved) == before and r.removed == []
    assert any("shards/s-000" in k for k in r.kept_unknown)
    # The rule: a symlinked shard folder is not part of the store; its rows are never read.
    with pytest.raises(OutsideStoreError, match="symbolic link"):
        store.snapshot().read(rid, *KEY, ids[:2])
    with pytest.raises(OutsideStoreError):
        _epoch(store, rid)
    problems = store.admin.verify()
    assert problems and all(p.shard == "s-000" for p in problems)
    assert any("symbolic link" in p.message for p in problems)
    # delete never follows it either
    store.admin.delete_recipe(rid, force=True)
    assert _tree(moved) == before


def test_gc_in_a_store_whose_shards_folder_is_a_link_stops_with_a_clear_error(tmp_path):
    store = Store.open(tmp_path / "store", create=True)
    out = _outside(tmp_path)
    before = _tree(out)
    shutil.rmtree(tmp_path / "store" / "shards", ignore_errors=True)
    (tmp_path / "store" / "shards").symlink_to(out, target_is_directory=True)
    with pytest.raises(OutsideStoreError, match="symbolic link"):
        store.admin.gc(grace_s=0)
    assert _tree(out) == before


# -- symbolic links as attempt folders and chunk files -------------------------------------------


def test_a_symlinked_orphan_attempt_folder_is_kept_and_what_it_points_to_untouched(store, tmp_path):
    _committed(store)
    out = _outside(tmp_path)
    before = _tree(out)
    (Path(store.url) / "shards" / "s-000" / ATTEMPT_LIKE).symlink_to(out / ATTEMPT_LIKE, target_is_directory=True)
    (Path(store.url) / "shards" / "s-new").mkdir()
    (Path(store.url) / "shards" / "s-new" / ATTEMPT_LIKE).symlink_to(out, target_is_directory=True)

    r = store.admin.gc(grace_s=0)
    assert _tree(out) == before and r.removed == []
    assert sum("symbolic link" in k for k in r.kept_unknown) == 2


def test_a_committed_attempt_folder_linked_outside_is_never_read_nor_reported_ok(store, tmp_path):
    rid, ids, _ = _committed(store)
    att = _attempt_dir(store, "s-000")
    moved = tmp_path / "elsewhere" / att.name
    moved.parent.mkdir()
    shutil.move(str(att), str(moved))
    att.symlink_to(moved, target_is_directory=True)

    with pytest.raises(OutsideStoreError):
        store.snapshot().read(rid, *KEY, ids)
    with pytest.raises(OutsideStoreError):
        _epoch(store, rid)
    problems = store.admin.verify()
    assert problems and any("symbolic link" in p.message for p in problems)
    r = CliRunner().invoke(app, ["store", "verify", "--store", store.url])
    assert r.exit_code == 1 and "ok" not in r.output.split()


def test_a_chunk_file_linked_outside_is_never_served(store, tmp_path):
    rid, ids, data = _committed(store)
    chunk = next(_attempt_dir(store, "s-000").glob("p2s.completion_last.L2/c/0/0"))
    copy = tmp_path / "copy-of-chunk"
    copy.write_bytes(chunk.read_bytes())  # the very bytes: only the link is wrong
    chunk.unlink()
    chunk.symlink_to(copy)

    with pytest.raises(OutsideStoreError, match="symbolic link"):
        _epoch(store, rid)
    with pytest.raises(OutsideStoreError):
        store.snapshot().read(rid, *KEY, ids)
    assert any("symbolic link" in p.message for p in store.admin.verify())


def test_a_chunk_linked_to_a_system_file_is_not_opened_and_its_size_not_revealed(store, tmp_path):
    rid, ids, _ = _committed(store)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 12345)
    chunk = next(_attempt_dir(store, "s-000").glob("p2s.completion_last.L2/c/0/0"))
    chunk.unlink()
    chunk.symlink_to(secret)
    with pytest.raises(StoreError) as err:
        _epoch(store, rid)
    assert isinstance(err.value, OutsideStoreError), err.value  # refused before it was opened
    assert "12345" not in str(err.value) and "symbolic link" in str(err.value)


def test_a_chunk_link_inside_an_orphan_attempt_keeps_the_attempt_and_its_target(store, tmp_path):
    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(4)
    w = store.shard_writer("s-orphan", rid, ids, chunk_bytes=64)
    with pytest.raises(RuntimeError):
        with w:
            w.write(*KEY, np.ones((4, 8), np.float32), "float32")
            raise RuntimeError("crash before the commit")
    target = tmp_path / "target"
    target.write_bytes(b"t" * 40)
    chunk = Path(store.url) / w.dir / "p2s.completion_last.L2" / "c" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to(target)

    r = store.admin.gc(grace_s=0)
    assert target.read_bytes() == b"t" * 40 and chunk.is_symlink()
    assert r.removed == [] and any(w.dir in k for k in r.kept_unknown)


# -- stray files at each level ---------------------------------------------------------------------


def _stray_store(store: Store) -> tuple[Path, list[Path]]:
    """A committed shard, an orphan attempt, and stray entries at every level of shards/."""
    rid, _, _ = _committed(store)
    ids = sample_ids(4, prefix="o-")
    w = store.shard_writer("s-orphan", rid, ids, chunk_bytes=64)
    with pytest.raises(RuntimeError):
        with w:
            w.write(*KEY, np.ones((4, 8), np.float32), "float32")
            raise RuntimeError("crash before the commit")
    root = Path(store.url)
    strays = [
        root / "shards" / "README.txt",                                 # in shards/
        root / "shards" / "s-000" / "notes.txt",                        # in a committed shard folder
        root / "shards" / "s-orphan" / "notes.txt",                     # in an uncommitted one
        root / "shards" / "s-000" / "backup" / "x.bin",                 # a folder of another name
        root / "shards" / "not a shard" / "y.bin",                      # a shard folder of another name
        root / "shards" / "s-lonely" / ATTEMPT_LIKE / "z.bin",          # no attempt.json: no record
    ]
    for p in strays:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"stray")
    return root, strays


def test_gc_keeps_and_reports_stray_files_at_every_level(store):
    root, strays = _stray_store(store)
    r = store.admin.gc(grace_s=0)  # even at no grace at all
    assert all(p.read_bytes() == b"stray" for p in strays)
    for p in (strays[0], strays[1], strays[2], strays[3].parent, strays[4].parent):
        assert any(str(p.relative_to(root)) in k for k in r.kept_unknown), p
    assert any("s-lonely" in k for k in r.kept_unknown)
    assert r.removed == ["shards/s-orphan/" + r.removed[0].rsplit("/", 1)[1]]  # only the real orphan
    assert store.admin.verify() == []


def test_a_stray_file_inside_an_orphan_attempt_or_array_keeps_the_attempt(store):
    rid = store.put_recipe({"r": 1}, name="r")
    folders = []
    for k, where in enumerate(("", "p2s.completion_last.L2/")):
        w = store.shard_writer(f"s-{k}", rid, sample_ids(4), chunk_bytes=64)
        with pytest.raises(RuntimeError):
            with w:
                w.write(*KEY, np.ones((4, 8), np.float32), "float32")
                raise RuntimeError("crash")
        (Path(store.url) / w.dir / f"{where}mine.txt").write_text("user file")
        folders.append(Path(store.url) / w.dir)
    # a writer record from long ago: only the stray file keeps them
    for f in folders:
        d = json.loads((f / "attempt.json").read_text())
        d["started_at"] = "2000-01-01T00:00:00+00:00"
        (f / "attempt.json").write_text(json.dumps(d))
    r = store.admin.gc(grace_s=60)
    assert r.removed == [] and all(f.is_dir() for f in folders)
    assert sum("mine.txt" in k for k in r.kept_unknown) == 2


def test_an_attempt_without_a_record_is_never_infinitely_old(store):
    _committed(store)
    lonely = Path(store.url) / "shards" / "s-new" / ATTEMPT_LIKE
    (lonely / "p2s.completion_last.L2").mkdir(parents=True)
    (lonely / "p2s.completion_last.L2" / "zarr.json").write_text("{}")
    r = store.admin.gc()  # the default grace: before, no attempt.json counted as infinitely old
    assert lonely.is_dir() and r.removed == []
    assert any(ATTEMPT_LIKE in k for k in r.kept_unknown)


def test_info_and_the_gc_command_report_what_they_keep(store):
    root, strays = _stray_store(store)
    info = store.admin.info()
    assert len(info.unrecognised) >= 5 and len(info.orphans) == 2  # by name: s-orphan and s-lonely
    r = CliRunner().invoke(app, ["store", "gc", "--store", store.url, "--grace", "0"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "README.txt" in r.output and "kept" in r.output
    assert all(p.exists() for p in strays)


def test_delete_leaves_an_attempt_holding_a_stray_file_and_the_file(store):
    rid, _, _ = _committed(store)
    stray = _attempt_dir(store, "s-000") / "mine.txt"
    stray.write_text("user file")
    r = store.admin.delete_recipe(rid)
    assert stray.read_text() == "user file" and any("mine.txt" in k for k in r.kept_unknown)
    assert store.snapshot().shards == {}


def test_removal_never_follows_a_link_to_a_folder_inside_an_attempt(store, tmp_path):
    """A folder link inside a deleted attempt: the attempt is kept, the target untouched."""
    rid, _, _ = _committed(store)
    out = _outside(tmp_path)
    before = _tree(out)
    os.symlink(out, _attempt_dir(store, "s-000") / "p2s.completion_last.L9", target_is_directory=True)
    store.admin.delete_recipe(rid)
    assert _tree(out) == before
