"""Ray actor pools: N actors that each build one worker, with units of work mapped over them.

Extraction (shards) and evaluation (units of (method, alphas, samples)) run on Ray the same
way, through :func:`run_pool`::

    result = run_pool(job, tasks, RayOptions(workers=2, address="auto"), gpu=False,
                      on_result=lambda run, failed: print(run))

``job`` is a picklable :class:`ActorJob`: each actor calls ``job.build()`` once in its
constructor (the model is loaded once per actor), then ``job.run(worker, task)`` for every task
the ``ray.util.ActorPool`` hands it. CPU actors reserve ``cpus_per_worker`` CPUs and run torch
on that many threads; on CUDA each actor holds one GPU.

Faults are Ray's business: a killed actor is restarted (``max_restarts``) and its in-flight
task retried (``max_task_retries``); a task that raises is retried as often
(``retry_exceptions``). A task that fails every attempt does not stop the others: it is in
:attr:`PoolRun.failed` with its reason, and the caller decides what to raise. The caller's
worker commits its own results to the store, so a task retried after a partial commit must be
idempotent there (the store's create-if-absent commits are).

Ray and torch are imported where a pool or an actor runs: a config that only names
:class:`RayOptions` loads neither (``import ray`` alone is about 1 s, measured).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from l2s_data.errors import ConfigError

__all__ = ["ActorJob", "FORWARDED_ENV", "PoolRun", "RayOptions", "TaskRun", "absolute_path", "run_pool"]

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
    """How the work is spread. ``workers`` actors, each with ``cpus_per_worker`` CPUs (torch
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

    @classmethod
    def or_in_process(cls, workers: int, address: str | None = None, cpus_per_worker: int = 1,
                      max_restarts: int = 3, max_task_retries: int = 3, *, what: str = "run") -> RayOptions | None:
        """None for ``workers == 0`` (the ``what`` runs in this process, so no ``address``),
        else the options of a Ray run, checked."""
        if workers == 0:
            if address is not None:
                raise ConfigError(f"--address {address!r} needs --workers N (N >= 1): with --workers 0 the "
                                  f"{what} runs in this process")
            return None
        return cls(workers, address, cpus_per_worker, max_restarts, max_task_retries)


class ActorJob(Protocol):
    """What a pool runs; picklable, since every actor is built from it alone."""

    #: the error class a failed task or actor start is reported with (an L2SError subclass)
    error: type[Exception]
    #: what the work is called in messages ("extraction", "evaluation")
    what: str

    def build(self) -> Any:
        """The worker: built once per actor (loads the model)."""

    def device(self, worker: Any) -> str:
        """The device ``worker`` computes on, for reports."""

    def run(self, worker: Any, task: Any) -> Any:
        """Compute and commit one task; the return value goes back to the driver."""

    def task_id(self, task: Any) -> str:
        """A task's unique id."""

    def label(self, task: Any) -> str:
        """A task as messages name it ("shard 3f2a (8 samples)")."""


@dataclass(frozen=True)
class TaskRun:
    """What one actor returns for one task: its result and who computed it on which try."""

    task_id: str
    value: Any
    attempt: int     # 0 = first try; >0 = a Ray retry (after an error or an actor restart)
    pid: int
    device: str


@dataclass(frozen=True)
class PoolRun:
    """Every finished task, the failed ones (id -> why) and the actors' ``{"pid", "device", "node"}``."""

    runs: tuple[TaskRun, ...]
    failed: Mapping[str, str] = field(default_factory=dict)
    infos: tuple[Mapping[str, Any], ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(i["device"] for i in self.infos)

    @property
    def retried(self) -> int:
        """Tasks that needed more than one attempt, the failed ones included."""
        return sum(1 for r in self.runs if r.attempt > 0) + len(self.failed)


class _PoolActor:
    """A Ray actor around one worker (built once, in the constructor)."""

    def __init__(self, job: ActorJob, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.job = job
        self.worker = job.build()
        self.device = job.device(self.worker)

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "device": self.device, "node": ray.get_runtime_context().get_node_id()}

    def run(self, task: Any) -> TaskRun:
        attempt = _attempt_number()
        try:
            value = self.job.run(self.worker, task)
        except Exception as err:  # re-raised with the task's name; Ray retries it
            raise self.job.error(f"{self.job.label(task)} failed on attempt {attempt + 1} in pid {os.getpid()}: "
                                 f"{type(err).__name__}: {err}") from err
        return TaskRun(self.job.task_id(task), value, attempt, os.getpid(), self.device)


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
    # The driver shows one progress bar for the pool; a bar per actor per model load in the
    # driver's log stream would only interleave with it.
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    return env


def absolute_path(p: str, base: str | os.PathLike[str] | None = None) -> str:
    """A local path made absolute, relative to ``base`` when given, else to the working folder
    (actors and trials do not share the driver's); URLs and "" as given."""
    if not p or "://" in p:
        return p
    path = Path(p).expanduser()
    return str((path if base is None else Path(base) / path).resolve())


def run_pool(job: ActorJob, tasks: Sequence[Any], opts: RayOptions, *, gpu: bool,
             on_start: Callable[[list[dict[str, Any]]], None] | None = None,
             on_result: Callable[[TaskRun | None, Mapping[str, str]], None] | None = None) -> PoolRun:
    """Run every task on ``opts.workers`` actors; connect to Ray first when not connected.

    ``on_start`` gets each actor's ``{"pid", "device", "node"}`` once they are all up;
    ``on_result`` is called after every finished task (with its run) or failed one (with None),
    with the failures so far. Actors are killed at the end; a connection made here is closed.
    """
    if not tasks:
        return PoolRun(())
    import ray
    from ray.util import ActorPool

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=opts.address, logging_level="WARNING", log_to_driver=True)
    try:
        _check_resources(ray.cluster_resources(), opts, gpu)
    except ConfigError:
        if connected_here:
            ray.shutdown()
        raise
    actor_cls = ray.remote(_PoolActor).options(
        num_cpus=0 if gpu else opts.cpus_per_worker, num_gpus=1 if gpu else 0,
        max_restarts=opts.max_restarts, max_task_retries=opts.max_task_retries,
        runtime_env={"env_vars": _forwarded_env(opts.cpus_per_worker)})
    actors = [actor_cls.remote(job, opts.cpus_per_worker) for _ in range(opts.workers)]
    runs: list[TaskRun] = []
    failed: dict[str, str] = {}
    infos: list[dict[str, Any]] = []
    try:
        infos = _start(ray, actors, opts, gpu, job)
        if on_start:
            on_start(infos)
        pool = ActorPool(actors)
        pending: dict[str, Any] = {}  # task id -> ObjectRef of its current attempt

        def submit(actor: Any, task: Any) -> Any:
            ref = actor.run.options(retry_exceptions=True).remote(task)
            pending[job.task_id(task)] = ref
            return ref

        for task in tasks:
            pool.submit(submit, task)
        while pool.has_next():
            r: TaskRun | None = None
            try:
                r = pool.get_next_unordered()
                pending.pop(r.task_id, None)
                runs.append(r)
            except ray.exceptions.RayError:
                for tid, err in _failed_refs(ray, pending).items():
                    failed[tid] = err
                    pending.pop(tid)
            if on_result:
                on_result(r, dict(failed))
        done = {r.task_id for r in runs}
        for task in tasks:  # tasks never handed out: every actor died for good
            tid = job.task_id(task)
            if tid not in failed and tid not in done:
                failed[tid] = "no live worker was left to run it (every actor exhausted its restarts)"
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
        if connected_here:
            ray.shutdown()
    return PoolRun(tuple(runs), failed, tuple(infos))


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


def _start(ray: Any, actors: Sequence[Any], opts: RayOptions, gpu: bool, job: ActorJob) -> list[dict[str, Any]]:
    """Wait for every actor's constructor (model load); a constructor error names its cause."""
    try:
        return ray.get([a.info.remote() for a in actors])
    except ray.exceptions.RayError as err:
        need = "1 GPU" if gpu else f"{opts.cpus_per_worker} CPU(s)"
        raise job.error(f"a Ray {job.what} worker ({need} each, {opts.workers} asked) could not start: "
                        f"{_cause(err)}") from err


def _failed_refs(ray: Any, pending: Mapping[str, Any]) -> dict[str, str]:
    """The tasks whose attempt has ended in an error (after Ray's retries), with the reason."""
    if not pending:
        return {}
    done, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0)
    done = set(done)
    out = {}
    for tid, ref in pending.items():
        if ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as err:
                out[tid] = _cause(err)
    return out


def _cause(err: BaseException) -> str:
    """The innermost readable message of a Ray error (the user's exception, not the traceback)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".split("\n")[0]
    text = str(err).strip().split("\n")
    return text[-1] if text else type(err).__name__
