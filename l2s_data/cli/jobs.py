"""`l2s submit extract|train|sweep|evaluate|serve CONFIG`, `l2s jobs list|status|logs|stop`: thin wrappers over l2s_data.submit.

``l2s submit`` is a group with one command per job kind; a new kind (``sweep``, ``evaluate``)
is one more function here that calls :func:`_submit` with its script's arguments.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from l2s_data.cli._common import console, fail, note, say
from l2s_data.errors import ConfigError, L2SError

submit_app = typer.Typer(help="Submit a job to a Ray cluster through its Jobs API (the dashboard, port 8265).",
                         no_args_is_help=True)
jobs_app = typer.Typer(help="List, follow and stop the jobs of a Ray cluster.", no_args_is_help=True)

_ADDRESS_HELP = "The cluster's Jobs API, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)."
_TOKEN_HELP = ("File holding the Ray auth token (Ray 2.60 clusters require one by default). Default: "
               "$RAY_AUTH_TOKEN, then $RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token.")
_Address = typer.Option(None, "--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
_TokenFile = typer.Option(None, "--token-file", help=_TOKEN_HELP, exists=True, dir_okay=False)
_DryRun = typer.Option(False, "--dry-run", help="Print the entrypoint and runtime_env that would be submitted; "
                                                "contact no cluster.")


def _client(address: Optional[str], token_file: Optional[Path]):
    from l2s_data.submit import JobClient

    token = token_file.read_text().strip() if token_file else None
    return JobClient(address or "", token=token)


def _env(pairs: List[str]) -> dict[str, str]:
    """``KEY=VALUE`` as given; a bare ``KEY`` takes its value from this shell."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not key:
            raise ConfigError(f"--env {p!r}: expected KEY=VALUE, or KEY to pass this shell's value")
        if not sep:
            if key not in os.environ:
                raise ConfigError(f"--env {key}: {key} is not set in this shell; give KEY=VALUE")
            value = os.environ[key]
        out[key] = value
    return out


def _job_path(config: Path) -> str:
    """The config as the job sees it: relative to the uploaded project folder when inside it,
    else the absolute path (which must then exist on the cluster's head node)."""
    from l2s_data.submit import project_root

    path = config.resolve()
    try:
        return str(path.relative_to(project_root()))
    except ValueError:
        note(f"{config} is outside the project folder, so it is not uploaded; the job reads {path} on the cluster")
        return str(path)


def _submit(kind: str, args: list[str], address: Optional[str], token_file: Optional[Path], env: List[str],
            wait: bool, dry_run: bool = False) -> None:
    try:
        if dry_run:
            import json

            from l2s_data.submit import job_spec

            spec = job_spec(kind, args, env=_env(env))
            say(f"entrypoint: {spec.entrypoint}")
            say(f"runtime_env: {json.dumps(spec.runtime_env, sort_keys=True)}")
            return
        client = _client(address, token_file)
        job_id = client.submit(kind, args, env=_env(env))
        say(Text.assemble(f"submitted {kind} job ", (job_id, "bold"), f" to {client.address}"))
        say(f"  follow it: l2s jobs logs {job_id} --address {client.address}")
        if wait:
            with console.status(f"waiting for {job_id}..."):
                info = client.wait(job_id)
            console.print(client.logs(job_id), markup=False, highlight=False, end="")
            say(f"job {job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
            if info.status != "SUCCEEDED":
                raise typer.Exit(1)
    except L2SError as err:
        fail(err, code=2)


@submit_app.command("extract")
def submit_extract(
    config: Path = typer.Argument(..., help="TOML extraction config; its store must be a URL every node reaches."),
    address: Optional[str] = _Address,
    workers: int = typer.Option(1, "--workers", min=1, help="Ray actors: one GPU each on CUDA, else CPU actors."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", min=1, help="CPU actors: CPUs (torch threads) each."),
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment, or KEY to pass "
                                                     "this shell's value (store credentials, endpoints). Repeatable."),
    token_file: Optional[Path] = _TokenFile,
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end, then print its logs."),
    dry_run: bool = _DryRun,
) -> None:
    """Run `jobs/extract.py CONFIG --workers N` on a cluster (the project folder is uploaded)."""
    _submit("extract", [_job_path(config), "--workers", str(workers), "--cpus-per-worker", str(cpus_per_worker)],
            address, token_file, env, wait, dry_run)


@submit_app.command("train")
def submit_train(
    config: Path = typer.Argument(..., help="TOML training config; its store and out_dir must be reachable from the cluster."),
    address: Optional[str] = _Address,
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment, or KEY to pass "
                                                     "this shell's value. Repeatable."),
    token_file: Optional[Path] = _TokenFile,
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end, then print its logs."),
    dry_run: bool = _DryRun,
) -> None:
    """Run `jobs/train.py CONFIG` on a cluster: one predictor trained from the store."""
    _submit("train", [_job_path(config)], address, token_file, env, wait, dry_run)


@submit_app.command("sweep")
def submit_sweep(
    config: Path = typer.Argument(..., help="TOML sweep config; the base config's store and out_dir must be "
                                            "absolute paths or URLs every node reaches."),
    address: Optional[str] = _Address,
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment, or KEY to pass "
                                                     "this shell's value. Repeatable."),
    token_file: Optional[Path] = _TokenFile,
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end, then print its logs."),
    dry_run: bool = _DryRun,
) -> None:
    """Run `jobs/train.py CONFIG --sweep` on a cluster: the sweep's trials run as Ray Tune trials there."""
    _submit("sweep", [_job_path(config), "--sweep"], address, token_file, env, wait, dry_run)


@submit_app.command("evaluate")
def submit_evaluate(
    config: Path = typer.Argument(..., help="TOML evaluation config; its store, model, data and predictor must be "
                                            "reachable from the cluster."),
    address: Optional[str] = _Address,
    workers: int = typer.Option(1, "--workers", min=1, help="Ray actors: one GPU each on CUDA, else CPU actors."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", min=1, help="CPU actors: CPUs (torch threads) each."),
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment, or KEY to pass "
                                                     "this shell's value (store credentials, endpoints). Repeatable."),
    token_file: Optional[Path] = _TokenFile,
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end, then print its logs."),
    dry_run: bool = _DryRun,
) -> None:
    """Run `jobs/evaluate.py CONFIG --workers N` on a cluster: steered generation over Ray actors."""
    _submit("evaluate", [_job_path(config), "--workers", str(workers), "--cpus-per-worker", str(cpus_per_worker)],
            address, token_file, env, wait, dry_run)


@submit_app.command("serve")
def submit_serve(
    config: Path = typer.Argument(..., help="TOML serving config; its model, store, data and predictor must be "
                                            "reachable from the cluster's nodes."),
    address: Optional[str] = _Address,
    replicas: Optional[int] = typer.Option(None, "--replicas", min=1, help="Replicas: one GPU each on CUDA, else "
                                                                          "CPU replicas. Default: the config's serve.replicas."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address the Serve proxy listens on, on every node."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port. Default: the config's serve.port."),
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment, or KEY to pass "
                                                     "this shell's value (store credentials, endpoints). Repeatable."),
    token_file: Optional[Path] = _TokenFile,
    wait: bool = typer.Option(False, "--wait", help="Wait for the job (the deployment) to end, then print its logs."),
    dry_run: bool = _DryRun,
) -> None:
    """Run `jobs/serve.py CONFIG` on a cluster: deploys the Ray Serve application, which keeps serving after the job ends."""
    args = [_job_path(config), "--address", "auto", "--host", host]
    if replicas:
        args += ["--replicas", str(replicas)]
    if port:
        args += ["--port", str(port)]
    _submit("serve", args, address, token_file, env, wait, dry_run)


def _when(t: Optional[float]) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


@jobs_app.command("list")
def jobs_list(address: Optional[str] = _Address, token_file: Optional[Path] = _TokenFile) -> None:
    """Every job of the cluster, oldest first."""
    try:
        jobs = _client(address, token_file).list()
    except L2SError as err:
        fail(err, code=2)
    # One plain line per job (ids stay whole and greppable, whatever the terminal width).
    say("job id\tstatus\tstarted (UTC)\tended (UTC)\tentrypoint")
    for j in jobs:
        say("\t".join([j.job_id, j.status, _when(j.start_time), _when(j.end_time), j.entrypoint]))


@jobs_app.command("status")
def jobs_status(job_id: str = typer.Argument(...), address: Optional[str] = _Address,
                token_file: Optional[Path] = _TokenFile) -> None:
    """One job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    try:
        j = _client(address, token_file).info(job_id)
    except L2SError as err:
        fail(err, code=2)
    say(f"{j.job_id}: {j.status}" + (f" ({j.message})" if j.message else ""))


@jobs_app.command("logs")
def jobs_logs(job_id: str = typer.Argument(...), address: Optional[str] = _Address,
              token_file: Optional[Path] = _TokenFile) -> None:
    """Everything the job's driver printed so far."""
    try:
        text = _client(address, token_file).logs(job_id)
    except L2SError as err:
        fail(err, code=2)
    console.print(text, markup=False, highlight=False, end="")


@jobs_app.command("stop")
def jobs_stop(job_id: str = typer.Argument(...), address: Optional[str] = _Address,
              token_file: Optional[Path] = _TokenFile) -> None:
    """Stop a running job (its committed shards stay; a rerun computes only what is missing)."""
    try:
        stopped = _client(address, token_file).stop(job_id)
    except L2SError as err:
        fail(err, code=2)
    say(f"{job_id}: " + ("stop requested" if stopped else "was not running"))


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s submit ...`` and ``l2s jobs ...`` on ``root``."""
    root.add_typer(submit_app, name="submit")
    root.add_typer(jobs_app, name="jobs")
