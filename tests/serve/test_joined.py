"""Batches handed over while the model runs wait together and the next run takes them as one
(what keeps a busy replica from running many small batches one after another)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from l2s_data.serve.joined import JoinedRuns


class _Model:
    """A run_batch that records its runs and holds the first one until released."""

    def __init__(self):
        self.runs: list[list[str]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def __call__(self, rows: list[str]) -> list[str]:
        self.runs.append(list(rows))
        if len(self.runs) == 1:
            self.first_started.set()
            self.release.wait(60)
        if "boom" in rows:
            raise ValueError("the run failed")
        return [f"answer to {r}" for r in rows]


async def _submit_while_busy(model: _Model, runs: JoinedRuns, later: list[list[str]]) -> list:
    first = asyncio.create_task(runs.run(["a"]))
    await asyncio.to_thread(model.first_started.wait, 60)  # the model is busy with ["a"]
    others = [asyncio.create_task(runs.run(b)) for b in later]
    await asyncio.sleep(0)  # every batch handed over before the model is free again
    model.release.set()
    return await asyncio.gather(first, *others, return_exceptions=True)


def test_batches_handed_over_during_a_run_join_the_next_run_up_to_max_rows():
    model = _Model()
    runs = JoinedRuns(model, max_rows=4)
    got = asyncio.run(_submit_while_busy(model, runs, [["b", "c"], ["d"], ["e"], ["f", "g", "h", "i", "j"]]))
    # Each caller gets its own rows' results, in order.
    assert got == [["answer to a"], ["answer to b", "answer to c"], ["answer to d"], ["answer to e"],
                   [f"answer to {r}" for r in "fghij"]]
    # Three batches (4 rows) ran as one run after the first; the batch over max_rows ran alone.
    assert model.runs == [["a"], ["b", "c", "d", "e"], ["f", "g", "h", "i", "j"]]
    assert not runs.running and not runs.waiting


def test_a_failing_run_fails_its_own_callers_and_the_next_run_goes_on():
    model = _Model()
    runs = JoinedRuns(model, max_rows=2)
    got = asyncio.run(_submit_while_busy(model, runs, [["boom"], ["x"], ["y"]]))
    assert got[0] == ["answer to a"]
    assert isinstance(got[1], ValueError) and isinstance(got[2], ValueError)  # the run of boom and x
    assert got[3] == ["answer to y"]
    assert model.runs == [["a"], ["boom", "x"], ["y"]]


@pytest.mark.parametrize("n", [1, 3])
def test_an_idle_model_runs_a_batch_at_once(n):
    model = _Model()
    model.release.set()
    runs = JoinedRuns(model, max_rows=8)
    rows = [str(i) for i in range(n)]
    assert asyncio.run(runs.run(rows)) == [f"answer to {r}" for r in rows]
    assert model.runs == [rows]
