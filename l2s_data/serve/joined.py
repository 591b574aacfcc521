"""Batches that wait for the model together: one run of the model at a time, in a worker thread,
and the batches handed over while it runs are taken together by the next run.

Ray Serve's ``@serve.batch`` forms the next batch while one runs and closes it when it is full or
its wait is over; with one run at a time, a busy replica would queue several small batches, each
one run of the model later than the one before (and every run costs the model's per-call work,
however few its rows). Here those batches join::

    runs = JoinedRuns(engine.run_batch, max_rows=16)
    results = await runs.run(batch)     # from the @serve.batch method; one result per request

``run_batch`` takes a list of requests and returns one result per request, in order (it answers
a failing row with its error rather than raising); the next run takes the waiting batches oldest
first, whole, up to ``max_rows`` rows (a batch larger than that runs on its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["JoinedRuns"]


class JoinedRuns:
    """One run of ``run_batch`` at a time; batches handed over meanwhile join the next run."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_rows: int):
        self.run_batch = run_batch
        self.max_rows = max_rows
        self.waiting: list[tuple[list[Any], asyncio.Future]] = []
        self.running = False

    async def run(self, reqs: Sequence[Any]) -> list[Any]:
        """The results of ``reqs``, once a run that holds them has finished."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.waiting.append((list(reqs), done))
        if not self.running:
            self.running = True
            loop.create_task(self._drain())
        return await done

    def _take(self) -> list[tuple[list[Any], asyncio.Future]]:
        taken, rows = [], 0
        while self.waiting and (not taken or rows + len(self.waiting[0][0]) <= self.max_rows):
            taken.append(self.waiting.pop(0))
            rows += len(taken[-1][0])
        return taken

    async def _drain(self) -> None:
        taken: list[tuple[list[Any], asyncio.Future]] = []
        try:
            while self.waiting:
                taken = self._take()
                rows = [r for reqs, _ in taken for r in reqs]
                try:
                    results = await asyncio.to_thread(self.run_batch, rows)
                except Exception as err:  # noqa: BLE001 - each caller of the run gets it; the next run goes on
                    _fail(taken, err)
                    continue
                k = 0
                for reqs, done in taken:
                    if not done.done():  # else its caller went away (the request was cancelled)
                        done.set_result(list(results[k:k + len(reqs)]))
                    k += len(reqs)
                taken = []
        except BaseException:  # cancelled (the replica stops): no caller waits for ever
            _fail(taken + self.waiting, RuntimeError("the replica stopped before this batch ran"))
            self.waiting.clear()
            raise
        finally:
            self.running = False


def _fail(batches: list[tuple[list[Any], asyncio.Future]], err: Exception) -> None:
    for _, done in batches:
        if not done.done():
            done.set_exception(err)
