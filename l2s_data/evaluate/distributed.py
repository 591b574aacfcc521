"""Evaluation on Ray: one actor per GPU (or N CPU actors), each running the units of the plan.

::

    from l2s_data.evaluate import Evaluation
    from l2s_data.evaluate.distributed import run_evaluation

    ev = Evaluation.from_file("l2s_data/evaluate/configs/tiny-llava.toml")
    report = run_evaluation(ev, workers=2)                  # local Ray (ray.init())
    report = run_evaluation(ev, workers=8, address="auto")  # join a running cluster
    report = run_evaluation(ev, workers=0)                  # in this process, no Ray

The driver plans against the store exactly as :meth:`Evaluation.run` does (the (method, alpha,
sample) rows not yet committed, cut into :class:`~.worker.EvalUnit` s of ``[run] unit_size``
samples) and records the run; the units go to the actor pool of :mod:`l2s_data.actors`, the
one extraction uses. Each actor builds one :class:`~.worker.EvalWorker` (model, vectors,
judges: loaded once) from the picklable config and calls ``run_unit``, which commits a Parquet
part of ``evaluations`` rows per (method, alpha) batch. A killed actor is restarted and its unit
retried, skipping the rows its first attempt committed. A unit that fails
on every attempt ends the run with :class:`~l2s_data.errors.EvaluationError` naming it; the
others' rows stay, and a rerun computes only what is missing.

Batches depend on the plan alone, so on the CPU with a fixed thread count (``cpus_per_worker``)
greedy responses equal the in-process run's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from l2s_data.actors import RayOptions, TaskRun, absolute_path, run_pool
from l2s_data.errors import EvaluationError
from l2s_data.evaluate.config import EvalConfig
from l2s_data.evaluate.run import EvalPlan, EvalReport, Evaluation, committed_rows
from l2s_data.evaluate.worker import EvalUnit, EvalWorker, UnitOutcome

__all__ = ["actor_config", "remaining", "run_evaluation"]


def actor_config(ev: Evaluation) -> EvalConfig:
    """The config an actor builds its worker from: local paths absolute (actors do not share
    the driver's cwd) and the run id pinned (a derived id would hash the changed paths)."""
    c = ev.config

    def vec(spec: str) -> str:
        return spec if spec == "cache" else absolute_path(spec)

    return c.model_copy(update={
        "model": c.model.model_copy(update={"path": absolute_path(c.model.path)}),
        "data": c.data.model_copy(update={"path": absolute_path(c.data.path)}),
        "vectors": c.vectors.model_copy(update={"mean_s": vec(c.vectors.mean_s), "mean_s_ba": vec(c.vectors.mean_s_ba)}),
        "l2s": c.l2s.model_copy(update={"predictor": absolute_path(c.l2s.predictor)}),
        "judges": c.judges.model_copy(update={"guard": absolute_path(c.judges.guard),
                                              "quality_path": absolute_path(c.judges.quality_path)}),
        "run": c.run.model_copy(update={"store": absolute_path(c.run.store), "name": ev.run_id}),
    })


@dataclass(frozen=True)
class _UnitJob:
    """The pool's job (see :mod:`l2s_data.actors`): one EvalWorker per actor; tasks are
    (index in the plan, unit)."""

    config: EvalConfig
    what: str = "evaluation"
    error: type = EvaluationError

    def build(self) -> EvalWorker:
        return Evaluation(self.config).worker()

    def device(self, worker: EvalWorker) -> str:
        return str(worker.generator.adapter.device)

    def run(self, worker: EvalWorker, task: tuple[int, EvalUnit]) -> list[UnitOutcome]:
        # A retried unit (its actor died, or it raised) skips the rows its last attempt committed.
        done = committed_rows(worker.store, worker.run_id)
        return [o for part in remaining(task[1], done) for o in worker.run_unit(part)]

    def task_id(self, task: tuple[int, EvalUnit]) -> str:
        return f"unit-{task[0]}"

    def label(self, task: tuple[int, EvalUnit]) -> str:
        i, u = task
        return f"unit {i} ({u.method}, alphas {list(u.alphas)}, {len(u.sample_ids)} samples)"


def remaining(unit: EvalUnit, done: set[tuple[str, float | None, str]]) -> list[EvalUnit]:
    """``unit`` without its committed (method, alpha, sample) rows: the whole unit when none is
    committed (a first attempt), else its samples grouped by the alphas they lack."""
    by: dict[tuple, list[str]] = {}
    for sid in unit.sample_ids:
        lack = tuple(a for a in unit.alphas if (unit.method, a, sid) not in done)
        if lack:
            by.setdefault(lack, []).append(sid)
    return [EvalUnit(unit.method, lack, tuple(sids)) for lack, sids in by.items()]


def run_evaluation(ev: Evaluation, *, workers: int = 0, address: str | None = None, cpus_per_worker: int = 1,
                   max_restarts: int = 3, max_task_retries: int = 3,
                   on_plan: Callable[[EvalPlan], None] | None = None,
                   on_done: Callable[[UnitOutcome], None] | None = None,
                   on_start: Callable[[list[dict[str, Any]]], None] | None = None) -> EvalReport:
    """Compute every missing row of ``ev`` in this process (``workers=0``) or on Ray actors.

    ``on_done`` is called for each committed (method, alpha) batch (on Ray: when its unit
    returns); ``on_start`` gets each actor's ``{"pid", "device", "node"}`` once they are up.
    """
    opts = RayOptions.or_in_process(workers, address, cpus_per_worker, max_restarts, max_task_retries,
                                    what="evaluation")
    if opts is None:
        return ev.run(on_plan=on_plan, on_done=on_done)
    t0 = time.perf_counter()
    plan = ev.plan()
    if on_plan is not None:
        on_plan(plan)
    if not plan.units:  # nothing to compute: no Ray connection, no actor
        return EvalReport(ev.run_id, ev.store.url, plan, (), time.perf_counter() - t0)

    def started(infos: list[dict[str, Any]]) -> None:
        ev.record()  # after the workers loaded model, vectors and judges, as in-process
        if on_start is not None:
            on_start(infos)

    def finished(r: TaskRun | None, failed: Any) -> None:
        if r is not None and on_done is not None:
            for o in r.value:
                on_done(o)

    tasks = list(enumerate(plan.units))
    pool = run_pool(_UnitJob(actor_config(ev)), tasks, opts, gpu=ev.config.model.device.startswith("cuda"),
                    on_start=started, on_result=finished)
    outcomes = tuple(o for r in pool.runs for o in r.value)
    if pool.failed:
        lines = "; ".join(f"{tid}: {why}" for tid, why in sorted(pool.failed.items()))
        raise EvaluationError(
            f"{len(pool.failed)} of {len(plan.units)} evaluation unit(s) failed on every one of their "
            f"{opts.max_task_retries + 1} attempts: {lines}. The rows of the {len(pool.runs)} finished unit(s) are "
            f"committed; fix the cause and rerun the same config to compute only the missing rows.",
            units=tuple(sorted(pool.failed)))
    return EvalReport(ev.run_id, ev.store.url, plan, outcomes, time.perf_counter() - t0, ev.notes())
