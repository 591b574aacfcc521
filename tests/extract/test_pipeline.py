"""The worker's one bounded pipeline: order, bounds, and errors from every stage."""

from __future__ import annotations

import pytest

from l2s_data.extract.pipeline import run_pipeline


def _batches(shard):
    return [(shard, k, k == 2) for k in range(3)]  # three batches a shard, the last one marked


def _compute_shards():
    done: dict[int, list[int]] = {}

    def compute(batch):
        shard, k, last = batch
        done.setdefault(shard, []).append(k)
        if last:
            yield (shard, done.pop(shard))

    return compute


@pytest.mark.parametrize("ahead", [True, False])
def test_every_shard_is_computed_from_its_batches_and_written_in_order(ahead):
    written = []

    def write(result):
        written.append(result)
        return result[0]

    out = list(run_pipeline(range(5), _batches, _compute_shards(), write, depth=1, ahead=ahead))
    assert out == [0, 1, 2, 3, 4]
    assert written == [(s, [0, 1, 2]) for s in range(5)]


def test_prepare_runs_at_most_depth_plus_one_batches_ahead_of_compute():
    prepared = []
    lead = []

    def prepare(shard):
        for b in _batches(shard):
            prepared.append(b)
            yield b

    computed = []

    def compute(batch):
        computed.append(batch)
        lead.append(len(prepared) - len(computed))
        yield batch

    list(run_pipeline(range(4), prepare, compute, None, depth=2))
    assert len(computed) == 12 and max(lead) <= 2 + 1


def test_a_write_error_stops_the_run_after_writing_what_was_computed_and_is_raised():
    seen = []

    def compute(batch):
        shard, k, last = batch
        if last:
            yield shard

    def write(shard):
        seen.append(shard)
        if shard == 1:
            raise OSError("disk full while writing shard 1")
        return shard

    with pytest.raises(OSError, match="shard 1"):
        list(run_pipeline(range(6), _batches, compute, write, depth=1))
    assert seen[:2] == [0, 1] and len(seen) < 6


@pytest.mark.parametrize("stage", ["prepare", "compute"])
def test_an_error_in_prepare_or_compute_is_raised_in_the_callers_thread(stage):
    def prepare(shard):
        if stage == "prepare" and shard == 2:
            raise ValueError("bad shard 2")
        yield from _batches(shard)

    def compute(batch):
        if stage == "compute" and batch[0] == 2:
            raise ValueError("bad shard 2")
        if batch[2]:
            yield batch[0]

    written = []
    with pytest.raises(ValueError, match="bad shard 2"):
        list(run_pipeline(range(5), prepare, compute, written.append, depth=1))
    assert written == [0, 1]  # the shards computed before the error were written
