"""Ray job submission: run a ``jobs/*.py`` entry point on a cluster through the Ray Jobs API.

::

    from l2s_data.submit import JobClient

    client = JobClient("http://head:8265")                      # token: see below
    job_id = client.submit("extract", ["configs/big.toml", "--workers", "8"],
                           env={"AWS_ENDPOINT_URL": "https://s3.example.com"})
    client.wait(job_id)
    print(client.logs(job_id))

A job is a script of the project's ``jobs/`` folder (:data:`ENTRYPOINTS`), run by the cluster's
``python`` in a copy of the project folder (the runtime_env ``working_dir``, uploaded by the
client; ``.venv``, ``.git`` and outputs left out) with the given environment variables (the
runtime_env ``env_vars``). Adding a kind of job is one entry in :data:`ENTRYPOINTS` and one
command in ``l2s_data/cli/jobs.py``.

Ray 2.60 turns token authentication on by default: the dashboard (Jobs API) refuses a request
without ``Authorization: Bearer <token>``. The token is read, in order, from the ``token``
argument, ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, then
``~/.ray/auth_token`` (where ``ray get-auth-token --generate`` puts it), and sent as that header.
With no token found, requests go without one (a cluster started with ``RAY_AUTH_MODE=disabled``).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from l2s_data.errors import ConfigError, JobSubmissionError

__all__ = ["ENTRYPOINTS", "EXCLUDES", "JobClient", "JobInfo", "JobSpec", "find_token", "job_spec", "project_root"]

#: Job kind -> its script, relative to the project root.
ENTRYPOINTS: dict[str, str] = {"extract": "jobs/extract.py", "train": "jobs/train.py", "sweep": "jobs/train.py",
                               "evaluate": "jobs/evaluate.py", "serve": "jobs/serve.py"}

#: Left out of the uploaded working_dir (besides what .gitignore leaves out).
EXCLUDES = [".venv/", ".git/", "demo-out/", "out/", "build/", "*.egg-info/", "__pycache__/", ".pytest_cache/",
            ".hypothesis/"]

_FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def project_root() -> Path:
    """The folder holding ``jobs/`` and ``l2s_data/``: what a job's working_dir uploads."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "jobs").is_dir():
        raise ConfigError(f"no jobs/ folder beside the installed l2s_data ({root}): job submission uploads the "
                          f"project folder, so run it from a checkout of the repository (pip install -e .)")
    return root


def find_token(token: str | None = None) -> str | None:
    """The Ray auth token: ``token``, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH's file, ~/.ray/auth_token."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={path!r} names no file; point it at the token file, or unset it")
        return p.read_text().strip() or None
    default = Path.home() / ".ray" / "auth_token"
    if not default.is_file():
        return None
    return default.read_text().strip() or None


@dataclass(frozen=True)
class JobSpec:
    """What a submission sends: the entrypoint command line and the runtime_env."""

    entrypoint: str                # python jobs/<kind>.py ARGS (shell-quoted)
    runtime_env: dict[str, Any]    # working_dir, excludes, env_vars

    @property
    def argv(self) -> list[str]:
        """The entrypoint as arguments: ``["python", "jobs/<kind>.py", *ARGS]``."""
        return shlex.split(self.entrypoint)


def job_spec(kind: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
             working_dir: Path | None = None) -> JobSpec:
    """The entrypoint and runtime_env that :meth:`JobClient.submit` sends for ``jobs/<kind>.py ARGS``
    (nothing is contacted: ``l2s submit ... --dry-run`` prints it)."""
    if kind not in ENTRYPOINTS:
        raise ConfigError(f"unknown job kind {kind!r}; expected one of {sorted(ENTRYPOINTS)}")
    root = working_dir or project_root()
    entry = " ".join(["python", ENTRYPOINTS[kind], *map(shlex.quote, args)])
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": EXCLUDES}
    if env:
        runtime_env["env_vars"] = dict(env)
    return JobSpec(entry, runtime_env)


@dataclass(frozen=True)
class JobInfo:
    """One job as the Jobs API reports it."""

    job_id: str
    status: str
    entrypoint: str
    message: str | None
    start_time: float | None  # seconds since the epoch
    end_time: float | None


class JobClient:
    """A client of one cluster's Jobs API (``http://HEAD:8265``)."""

    def __init__(self, address: str, *, token: str | None = None):
        if not address:
            raise ConfigError("no Ray dashboard address: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
        from ray.job_submission import JobSubmissionClient  # ~1.8 s of import: only when a job is sent

        tok = find_token(token)
        headers = {"Authorization": f"Bearer {tok}"} if tok else None
        self.address = address
        self._token_sent = bool(tok)
        try:
            self._client = JobSubmissionClient(address, headers=headers)
        except Exception as err:  # noqa: BLE001 - connection, auth and version errors all land here
            raise self._error(f"cannot reach the Ray Jobs API at {address!r}: {err}. Check the address "
                              f"(the dashboard port, 8265 by default) and the auth token "
                              f"(RAY_AUTH_TOKEN or ~/.ray/auth_token)", err) from err

    def _error(self, message: str, err: BaseException) -> JobSubmissionError:
        """``message``, unless the server refused the request's authentication (HTTP 401): then
        whether a token was sent and refused, or none was found to send."""
        text = str(err)
        low = text.lower()
        if not ("401" in text or "unauthorized" in low or "authentication" in low):
            return JobSubmissionError(message)
        if self._token_sent:
            # Not the server's words: some Ray versions answer a wrong token with "no
            # authentication token was found", which sends users looking for a file they have.
            return JobSubmissionError(
                f"the Ray Jobs API at {self.address} refused the auth token that was sent: it is not "
                f"this cluster's token. Get the cluster's token on its head node "
                f"(`ray get-auth-token`) and pass it with --token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                f"or ~/.ray/auth_token."
            )
        return JobSubmissionError(
            f"the Ray Jobs API at {self.address} requires an auth token and none was found: pass it with "
            f"--token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` "
            f"on the head node prints it)."
        )

    def submit(self, kind: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
               working_dir: Path | None = None, submission_id: str | None = None) -> str:
        """Start ``jobs/<kind>.py ARGS`` on the cluster; returns the job id."""
        spec = job_spec(kind, args, env=env, working_dir=working_dir)
        try:
            return self._client.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env,
                                           submission_id=submission_id)
        except Exception as err:  # noqa: BLE001
            raise self._error(f"submitting {spec.entrypoint!r} to {self.address} failed: {err}", err) from err

    def info(self, job_id: str) -> JobInfo:
        try:
            d = self._client.get_job_info(job_id)
        except Exception as err:  # noqa: BLE001
            raise self._error(f"no job {job_id!r} at {self.address}: {err}. List them with "
                              f"`l2s jobs list --address {self.address}`", err) from err
        return _info(d)

    def list(self) -> list[JobInfo]:
        try:
            jobs = self._client.list_jobs()
        except Exception as err:  # noqa: BLE001
            raise self._error(f"listing the jobs of {self.address} failed: {err}", err) from err
        return sorted((_info(d) for d in jobs), key=lambda j: j.start_time or 0.0)

    def logs(self, job_id: str) -> str:
        self.info(job_id)  # a clear error for an unknown id
        return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; True if it was running."""
        self.info(job_id)
        return bool(self._client.stop_job(job_id))

    def wait(self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0) -> JobInfo:
        """Poll the Jobs API until the job ends (SUCCEEDED, FAILED or STOPPED)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.info(job_id)
            if info.status in _FINAL:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise JobSubmissionError(f"job {job_id} is still {info.status} after {timeout_s:.0f} s; "
                                         f"follow it with `l2s jobs status {job_id}`")
            time.sleep(poll_s)


def _info(d: Any) -> JobInfo:
    def secs(ms: Any) -> float | None:
        return ms / 1000.0 if ms else None

    status = getattr(d.status, "value", str(d.status))
    return JobInfo(d.submission_id or d.job_id, status, d.entrypoint, d.message, secs(d.start_time),
                   secs(d.end_time))
