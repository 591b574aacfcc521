"""Extraction on Ray: one actor per GPU (or N CPU actors), each running the one-shard unit.

::

    from l2s_data.extract import Extraction
    from l2s_data.extract.distributed import run_extraction

    ex = Extraction.from_file("l2s_data/extract/configs/tiny-llava.toml")
    report = run_extraction(ex, workers=2)                  # local Ray (ray.init())
    report = run_extraction(ex, workers=8, address="auto")  # join a running cluster
    report = run_extraction(ex, workers=0)                  # in this process, no Ray

The driver plans against the store exactly as the in-process run does, then hands the shards
to a ``ray.util.ActorPool``. Each actor builds one :class:`ExtractionWorker` from the picklable
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
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from l2s_data.errors import ConfigError, ExtractionError, ShardFailedError

from l2s_data.extract.plan import Plan, Shard
from l2s_data.extract.recipe import RecipeRef
from l2s_data.extract.run import Extraction, RunReport
from l2s_data.extract.worker import ExtractionWorker, ExtractJob, ShardOutcome

__all__ = ["Progress", "RayOptions", "RayRun", "ShardRun", "run_extraction", "run_on_ray", "extraction_row",
           "FORWARDED_ENV"]

#: Environment variables a driver passes on to its actors when set: store credentials and
#: endpoints (fsspec / s3fs / gcsfs read these), and the hub switches. Actors are started by
#: the raylets, whose environment is the cluster's, not the driver's.
FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS",
    "HF_HUB_OFFLINE", "HF_HOME",
)


@dataclass(frozen=True)
class RayOptions:
    """How the shards are spread. ``workers`` actors, each with ``cpus_per_worker`` CPUs (torch
    threads) or one GPU when the config's device is CUDA."""

    workers: int
    address: str | None = None
    cpus_per_worker: int = 1
    max_restarts: int = 3
    max_task_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: a Ray run needs at least 1 worker "
                              f"(0 runs in this process without Ray)")
        if self.cpus_per_worker < 1:
            raise ConfigError(f"cpus_per_worker = {self.cpus_per_worker}: expected at least 1")
        if self.max_restarts < 0 or self.max_task_retries < 0:
            raise ConfigError(f"max_restarts = {self.max_restarts}, max_task_retries = {self.max_task_retries}: "
                              f"expected 0 or more")


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
    """What one actor returns for one shard: the outcome and who computed it on which try."""

    outcome: ShardOutcome
    attempt: int     # 0 = first try; >0 = a Ray retry (after an error or an actor restart)
    pid: int
    device: str


class _ShardActor:
    """A Ray actor around one ExtractionWorker (model loaded once, in the constructor)."""

    def __init__(self, job: ExtractJob, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.worker = ExtractionWorker(job)
        self.device = str(self.worker.adapter.device)

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "device": self.device, "node": ray.get_runtime_context().get_node_id()}

    def run_shard(self, shard: Shard) -> ShardRun:
        attempt = _attempt_number()
        try:
            outcome = self.worker.run_shard(shard)
        except Exception as err:  # re-raised with the shard's name; Ray retries it
            raise ExtractionError(f"shard {shard.shard_id} ({len(shard.items)} samples) failed on attempt "
                                  f"{attempt + 1} in pid {os.getpid()}: {type(err).__name__}: {err}") from err
        return ShardRun(outcome, attempt, os.getpid(), self.device)


def _attempt_number() -> int:
    """This task's Ray attempt number (0 first); 0 where Ray does not expose it."""
    try:
        import ray

        core = ray._private.worker.global_worker.core_worker  # noqa: SLF001 - only place Ray has it
        return int(core.get_current_task_attempt_number())
    except Exception:  # noqa: BLE001 - a count for the progress bar, never fatal
        return 0


def _forwarded_env(cpus: int) -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env["OMP_NUM_THREADS"] = str(cpus)
    return env


def _prepare(ex: Extraction) -> tuple[Any, dict[str, RecipeRef], Plan]:
    """Register recipes and samples, plan: what ``Extraction.run`` does before computing."""
    store = ex.open_store(create=True)
    name = ex.config.run.name
    refs = {k: RecipeRef(r, store.put_recipe(r.spec(), name=f"{name}-{k}" if name else None))
            for k, r in ex.recipes.items()}
    samples, mem = ex.selection
    store.put_samples(samples, mem)
    plan = ex.plan(store=store, refs=refs)
    return store, refs, plan


def run_on_ray(ex: Extraction, opts: RayOptions, *, on_plan: Callable[[Plan], None] | None = None,
               on_progress: Callable[[Progress], None] | None = None,
               on_start: Callable[[list[dict[str, Any]]], None] | None = None) -> RayRun:
    """Plan on the driver, compute the missing shards on Ray actors, commit from the actors.

    ``on_start`` gets each actor's ``{"pid", "device", "node"}`` once they are up (tests use the
    PIDs); ``on_progress`` is called after every finished or failed shard. A shard that failed
    on every attempt is in ``RayRun.failed``; :func:`run_extraction` turns that into an error.
    """
    t0 = time.perf_counter()
    store, refs, plan = _prepare(ex)
    if on_plan:
        on_plan(plan)
    url = str(getattr(store, "url", ex.config.run.store))
    rids = {k: r.recipe_id for k, r in refs.items()}
    if not plan.shards:
        return RayRun(RunReport(url, rids, plan, (), time.perf_counter() - t0, tuple(ex.notes())), (), 0)

    import ray
    from ray.util import ActorPool

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=opts.address, logging_level="WARNING", log_to_driver=True)
    gpu = ex.config.model.device.startswith("cuda")
    try:
        _check_resources(ray.cluster_resources(), opts, gpu)
    except ConfigError:
        if connected_here:
            ray.shutdown()
        raise
    actor_cls = ray.remote(_ShardActor).options(
        num_cpus=0 if gpu else opts.cpus_per_worker, num_gpus=1 if gpu else 0,
        max_restarts=opts.max_restarts, max_task_retries=opts.max_task_retries,
        runtime_env={"env_vars": _forwarded_env(opts.cpus_per_worker)})
    job = ExtractJob(_absolute_paths(ex.config), dict(refs))
    actors = [actor_cls.remote(job, opts.cpus_per_worker) for _ in range(opts.workers)]
    runs: list[ShardRun] = []
    failed: dict[str, str] = {}
    infos: list[dict[str, Any]] = []
    try:
        infos = _start(ray, actors, opts, gpu)
        if on_start:
            on_start(infos)
        pool = ActorPool(actors)
        pending: dict[str, Any] = {}  # shard id -> ObjectRef of its current task
        by_id = {s.shard_id: s for s in plan.shards}

        def submit(actor: Any, shard: Shard) -> Any:
            ref = actor.run_shard.options(retry_exceptions=True).remote(shard)
            pending[shard.shard_id] = ref
            return ref

        for shard in plan.shards:
            pool.submit(submit, shard)
        t_compute = time.perf_counter()
        total = plan.samples_to_compute
        while pool.has_next():
            r: ShardRun | None = None
            try:
                r = pool.get_next_unordered()
                pending.pop(r.outcome.shard_id, None)
                runs.append(r)
            except ray.exceptions.RayError:
                for sid, err in _failed_refs(ray, pending).items():
                    failed[sid] = err
                    pending.pop(sid)
            if on_progress:
                on_progress(Progress(
                    len(plan.shards), total, len(runs), sum(x.outcome.samples + x.outcome.quarantined for x in runs),
                    sum(1 for x in runs if x.attempt > 0) + len(failed), len(failed),
                    time.perf_counter() - t_compute, r))
        for sid in by_id:  # shards never handed out: every actor died for good
            if sid not in failed and sid not in {r.outcome.shard_id for r in runs}:
                failed[sid] = "no live worker was left to run it (every actor exhausted its restarts)"
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
        if connected_here:
            ray.shutdown()
    report = RunReport(url, rids, plan, tuple(r.outcome for r in runs), time.perf_counter() - t0,
                       tuple(ex.notes()))
    return RayRun(report, tuple(i["device"] for i in infos), sum(1 for r in runs if r.attempt > 0) + len(failed),
                  dict(failed))


def _check_resources(have: Mapping[str, float], opts: RayOptions, gpu: bool) -> None:
    """Refuse a pool the cluster cannot place now (its actors would wait forever)."""
    kind, each = ("GPU", 1) if gpu else ("CPU", opts.cpus_per_worker)
    total = float(have.get(kind, 0))
    if opts.workers * each > total:
        fix = (f"pass --workers {int(total // each)} or fewer" if total >= each
               else ("set model.device = \"cpu\" or join a cluster with GPUs (--address)" if gpu
                     else "join a cluster with CPUs (--address)"))
        raise ConfigError(f"--workers {opts.workers} needs {opts.workers * each} {kind}(s) ({each} each), but the Ray "
                          f"cluster has {total:g}; {fix}. On an autoscaling cluster, start its nodes first "
                          f"(min_workers in the launcher YAML).")


def _absolute_paths(config: Any) -> Any:
    """The config with its local paths made absolute: actors do not share the driver's cwd."""
    def fix(p: str) -> str:
        return p if "://" in p else str(Path(p).expanduser().resolve())

    return config.model_copy(update={
        "model": config.model.model_copy(update={"path": fix(config.model.path)}),
        "data": config.data.model_copy(update={"path": fix(config.data.path)}),
        "run": config.run.model_copy(update={"store": fix(config.run.store)}),
    })


def _start(ray: Any, actors: Sequence[Any], opts: RayOptions, gpu: bool) -> list[dict[str, Any]]:
    """Wait for every actor's constructor (model load); a constructor error names its cause."""
    try:
        return ray.get([a.info.remote() for a in actors])
    except ray.exceptions.RayError as err:
        need = "1 GPU" if gpu else f"{opts.cpus_per_worker} CPU(s)"
        raise ExtractionError(f"a Ray extraction worker ({need} each, {opts.workers} asked) could not start: "
                              f"{_cause(err)}") from err


def _failed_refs(ray: Any, pending: Mapping[str, Any]) -> dict[str, str]:
    """The shards whose task has ended in an error (after Ray's retries), with the reason."""
    if not pending:
        return {}
    done, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0)
    done = set(done)
    out = {}
    for sid, ref in pending.items():
        if ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as err:
                out[sid] = _cause(err)
    return out


def _cause(err: BaseException) -> str:
    """The innermost readable message of a Ray error (the user's exception, not the traceback)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".split("\n")[0]
    text = str(err).strip().split("\n")
    return text[-1] if text else type(err).__name__


# -- one entry point for both modes, and the extractions table ----------------------------------
def run_extraction(ex: Extraction, *, workers: int = 0, address: str | None = None, cpus_per_worker: int = 1,
                   max_restarts: int = 3, max_task_retries: int = 3,
                   on_plan: Callable[[Plan], None] | None = None,
                   on_progress: Callable[[Progress], None] | None = None,
                   on_start: Callable[[list[dict[str, Any]]], None] | None = None) -> RunReport:
    """Run ``ex`` in this process (``workers=0``) or on Ray, and record it in ``extractions``.

    A failed Ray run is recorded too (status ``failed``, with the error) before it raises.
    """
    started = datetime.now(timezone.utc)
    if workers == 0:
        if address is not None:
            raise ConfigError(f"--address {address!r} needs --workers N (N >= 1): with --workers 0 the "
                              f"extraction runs in this process")
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

        report = ex.run(on_plan=plan_cb, on_done=done_cb)
        devices = (ex.config.model.device,)
        _record(ex, report, workers, devices, started, "completed", None, 0)
        return report
    opts = RayOptions(workers, address, cpus_per_worker, max_restarts, max_task_retries)
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
    ex.open_store(create=True).put_extractions([row])
