"""Extraction on Ray: one actor per GPU (or N CPU actors), each running the one-shard unit.

::

    from l2s_data.extract import Extraction
    from l2s_data.extract.distributed import run_extraction

    ex = Extraction.from_file("l2s_data/extract/configs/tiny-llava.toml")
    report = run_extraction(ex, workers=2)                  # local Ray (ray.init())
    report = run_extraction(ex, workers=8, address="auto")  # join a running cluster
    report = run_extraction(ex, workers=0)                  # in this process, no Ray

The driver plans against the store exactly as the in-process run does, then hands the shards
to the actor pool of :mod:`l2s_data.actors` (a ``ray.util.ActorPool``; evaluation uses the same
one). Each actor builds one :class:`ExtractionWorker` from the picklable
:class:`ExtractJob` (so it loads the model once) and calls ``run_shard(shard)``, the same unit
as ``--workers 0``: compute, write an immutable attempt, commit create-if-absent.

Faults are Ray's business, not ours: a killed actor is restarted (``max_restarts``) and its
in-flight shard retried (``max_task_retries``); a shard that raises is retried the same number
of times (``retry_exceptions``). Two attempts of one shard that both finish are settled by the
store's commit rule: the first manifest wins, the other attempt is an orphan for ``gc``. A
shard that fails every attempt does not stop the others; the run ends with
:class:`~l2s_data.errors.ShardFailedError` naming it, and every committed shard stays.

Every run (in-process or on Ray, completed or failed) is recorded as one row of the store's
``extractions`` table.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from l2s_data.actors import FORWARDED_ENV, RayOptions, TaskRun, absolute_path, run_pool
from l2s_data.errors import ExtractionError, ShardFailedError

from l2s_data.extract.plan import Plan, Shard
from l2s_data.extract.run import Extraction, RunReport
from l2s_data.extract.shard import ExtractJob, ShardOutcome
from l2s_data.extract.worker import ExtractionWorker

__all__ = ["Progress", "RayOptions", "RayRun", "ShardRun", "run_extraction", "run_on_ray", "extraction_row",
           "FORWARDED_ENV"]


@dataclass(frozen=True)
class Progress:
    """Where a run stands, for a progress bar. Rates are over the compute phase only."""

    shards_total: int
    samples_total: int
    shards_done: int = 0
    samples_done: int = 0
    retried: int = 0
    failed: int = 0
    seconds: float = 0.0
    last: "ShardRun | None" = None  # the shard run that just finished (None after a failure)

    @property
    def samples_per_s(self) -> float:
        return self.samples_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.samples_per_s
        return (self.samples_total - self.samples_done) / rate if rate > 0 else None


@dataclass(frozen=True)
class RayRun:
    """A Ray run's report and what only the Ray path knows: the actors' devices and retries."""

    report: RunReport
    devices: tuple[str, ...]
    retried: int
    failed: Mapping[str, str] = field(default_factory=dict)  # shard id -> why


@dataclass(frozen=True)
class ShardRun:
    """What one actor returned for one shard: the outcome and who computed it on which try."""

    outcome: ShardOutcome
    attempt: int     # 0 = first try; >0 = a Ray retry (after an error or an actor restart)
    pid: int
    device: str

    @classmethod
    def of(cls, run: TaskRun) -> "ShardRun":
        return cls(run.value, run.attempt, run.pid, run.device)


@dataclass(frozen=True)
class _ShardJob:
    """The pool's job (see :mod:`l2s_data.actors`): one ExtractionWorker per actor, shards as tasks."""

    job: ExtractJob
    what: str = "extraction"
    error: type = ExtractionError

    def build(self) -> ExtractionWorker:
        return ExtractionWorker(self.job)

    def device(self, worker: ExtractionWorker) -> str:
        return str(worker.adapter.device)

    def run(self, worker: ExtractionWorker, shard: Shard) -> ShardOutcome:
        return worker.run_shard(shard)

    def task_id(self, shard: Shard) -> str:
        return shard.shard_id

    def label(self, shard: Shard) -> str:
        return f"shard {shard.shard_id} ({len(shard.items)} samples)"


def run_on_ray(ex: Extraction, opts: RayOptions, *, on_plan: Callable[[Plan], None] | None = None,
               on_progress: Callable[[Progress], None] | None = None,
               on_start: Callable[[list[dict[str, Any]]], None] | None = None) -> RayRun:
    """Plan on the driver, compute the missing shards on Ray actors, commit from the actors.

    ``on_start`` gets each actor's ``{"pid", "device", "node"}`` once they are up (tests use the
    PIDs); ``on_progress`` is called after every finished or failed shard. A shard that failed
    on every attempt is in ``RayRun.failed``; :func:`run_extraction` turns that into an error.
    """
    t0 = time.perf_counter()
    store, refs, plan = ex.prepare()
    if on_plan:
        on_plan(plan)
    url = str(getattr(store, "url", ex.config.run.store))
    rids = {k: r.recipe_id for k, r in refs.items()}
    runs: list[ShardRun] = []
    t_compute = [time.perf_counter()]

    def started(infos: list[dict[str, Any]]) -> None:
        t_compute[0] = time.perf_counter()
        if on_start:
            on_start(infos)

    def progress(r: TaskRun | None, failed: Mapping[str, str]) -> None:
        last = ShardRun.of(r) if r is not None else None
        if last is not None:
            runs.append(last)
        if on_progress:
            on_progress(Progress(
                len(plan.shards), plan.samples_to_compute, len(runs),
                sum(x.outcome.samples + x.outcome.quarantined for x in runs),
                sum(1 for x in runs if x.attempt > 0) + len(failed), len(failed),
                time.perf_counter() - t_compute[0], last))

    job = _ShardJob(ExtractJob(_absolute_paths(ex.config), dict(refs)))
    pool = run_pool(job, plan.shards, opts, gpu=ex.config.model.device.startswith("cuda"),
                    on_start=started, on_result=progress)
    report = RunReport(url, rids, plan, tuple(r.value for r in pool.runs), time.perf_counter() - t0,
                       tuple(ex.notes()))
    return RayRun(report, pool.devices, pool.retried, dict(pool.failed))


def _absolute_paths(config: Any) -> Any:
    """The config with its local paths made absolute: actors do not share the driver's cwd."""
    return config.model_copy(update={
        "model": config.model.model_copy(update={"path": absolute_path(config.model.path)}),
        "data": config.data.model_copy(update={"path": absolute_path(config.data.path)}),
        "run": config.run.model_copy(update={"store": absolute_path(config.run.store)}),
    })


# -- one entry point for both modes, and the extractions table ----------------------------------
def run_extraction(ex: Extraction, *, workers: int = 0, address: str | None = None, cpus_per_worker: int = 1,
                   max_restarts: int = 3, max_task_retries: int = 3,
                   on_plan: Callable[[Plan], None] | None = None,
                   on_progress: Callable[[Progress], None] | None = None,
                   on_start: Callable[[list[dict[str, Any]]], None] | None = None) -> RunReport:
    """Run ``ex`` in this process (``workers=0``) or on Ray, and record it in ``extractions``.

    A failed run is recorded too (status ``failed``, with the error) before it raises, once it
    got as far as its plan (an error before that, in the config or the model, stores nothing).
    """
    started = datetime.now(timezone.utc)
    opts = RayOptions.or_in_process(workers, address, cpus_per_worker, max_restarts, max_task_retries,
                                    what="extraction")
    if opts is None:
        t_compute: list[float] = []
        done: list[ShardOutcome] = []
        plan_box: list[Plan] = []

        def plan_cb(p: Plan) -> None:
            plan_box.append(p)
            t_compute.append(time.perf_counter())
            if on_plan:
                on_plan(p)

        def done_cb(o: ShardOutcome) -> None:
            done.append(o)
            if on_progress and plan_box:
                p = plan_box[0]
                on_progress(Progress(len(p.shards), p.samples_to_compute, len(done),
                                     sum(x.samples + x.quarantined for x in done), 0, 0,
                                     time.perf_counter() - t_compute[0]))

        devices = (ex.config.model.device,)
        try:
            report = ex.run(on_plan=plan_cb, on_done=done_cb)
        except Exception as exc:
            # Recorded like a failed Ray run: the shards committed before the error are kept.
            if plan_box:
                p = plan_box[0]
                partial = RunReport(str(ex.config.run.store), {k: r.recipe_id for k, r in p.recipes.items()},
                                    p, tuple(done), time.perf_counter() - t_compute[0], ())
                _record(ex, partial, workers, devices, started, "failed", f"{type(exc).__name__}: {exc}", 0)
            raise
        _record(ex, report, workers, devices, started, "completed", None, 0)
        return report
    run = run_on_ray(ex, opts, on_plan=on_plan, on_progress=on_progress, on_start=on_start)
    if run.failed:
        lines = "; ".join(f"shard {sid}: {why}" for sid, why in sorted(run.failed.items()))
        err = ShardFailedError(
            f"{len(run.failed)} of {len(run.report.plan.shards)} shard(s) failed on every one of their "
            f"{opts.max_task_retries + 1} attempts: {lines}. The {len(run.report.outcomes)} shard(s) committed "
            f"in this run are kept; fix the cause and rerun the same config to compute only the missing keys.",
            report=run.report, shards=tuple(sorted(run.failed)))
        _record(ex, run.report, workers, run.devices, started, "failed", str(err), run.retried)
        raise err
    _record(ex, run.report, workers, run.devices, started, "completed", None, run.retried)
    return run.report


def extraction_row(ex: Extraction, report: RunReport, *, workers: int, devices: Sequence[str],
                   started: datetime, ended: datetime, status: str, error: str | None,
                   retried: int = 0) -> dict[str, Any]:
    """One ``extractions`` row (schema ``EXTRACTIONS``) for a finished or failed run."""
    p = report.plan
    seconds = max((ended - started).total_seconds(), 1e-9)
    return {
        "run_id": uuid.uuid4().hex,
        "created_at": ended,
        "status": status,
        "config_json": json.dumps(ex.config.to_dict(), sort_keys=True),
        "recipe_ids": sorted(report.recipe_ids.values()),
        "workers": int(workers),
        "devices": list(devices),
        "samples_computed": int(report.computed_samples),
        "samples_per_s": float(report.computed_samples / seconds),
        "keys_written": int(report.written_keys),
        "keys_cached": int(p.total_keys - p.missing_keys),
        "samples_quarantined": int(report.quarantined),
        "shards": len(report.outcomes),
        "shards_retried": int(retried),
        "shards_lost_races": int(report.lost_races),
        "started_at": started,
        "ended_at": ended,
        "error": error,
    }


def _record(ex: Extraction, report: RunReport, workers: int, devices: Sequence[str], started: datetime,
            status: str, error: str | None, retried: int) -> None:
    row = extraction_row(ex, report, workers=workers, devices=devices, started=started,
                         ended=datetime.now(timezone.utc), status=status, error=error, retried=retried)
    ex.open_store(create=True).put("extractions", [row])
