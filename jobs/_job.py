"""What every ``jobs/*.py`` script shares: its argument parser, the Ray options, the worker
lines it prints, and its exit codes.

A job script is ``main(argv) -> int``: it builds its parser with :func:`parser` (and
:func:`add_ray_options` when it runs Ray actors), and runs its body through :func:`run`, which
turns an error the project raises on purpose into one ``error: ...`` line on stderr. Exit codes,
the same for every job (and for ``l2s extract`` / ``l2s evaluate``):

- 0: done;
- 2: bad arguments (argparse), or an :class:`~l2s_data.errors.L2SError` (a bad config, data or
  store, a run that failed), whose message names what to fix;
- 1: anything else, with Python's traceback (a bug).

Nothing here imports torch or transformers: ``jobs/train.py`` runs without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from l2s_data.errors import L2SError

__all__ = ["EXIT_ERROR", "EXIT_OK", "add_ray_options", "parser", "print_workers", "run"]

EXIT_OK = 0
EXIT_ERROR = 2


def parser(description: str, config_help: str) -> argparse.ArgumentParser:
    """A job's parser, with its one positional argument: the TOML config."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("config", type=Path, help=config_help)
    return ap


def add_ray_options(ap: argparse.ArgumentParser, unit: str) -> None:
    """``--workers``, ``--address``, ``--cpus-per-worker``, ``--max-retries``; ``unit`` names what
    Ray retries (a shard, a unit)."""
    ap.add_argument("--workers", type=int, default=0,
                    help="0 = in this process; N = N Ray actors (one GPU each on CUDA, else --cpus-per-worker)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster to join (host:port or 'auto'); default: RAY_ADDRESS, else a local Ray")
    ap.add_argument("--cpus-per-worker", type=int, default=1, help="CPU actors: CPUs (torch threads) each")
    ap.add_argument("--max-retries", type=int, default=3, help=f"Ray retries of a {unit} and restarts of an actor")


def print_workers(infos: list[dict]) -> None:
    """One line per started actor (a job's output is read back with ``l2s jobs logs``)."""
    for i in infos:
        print(f"worker pid {i['pid']} on {i['device']} (node {i['node'][:12]})", flush=True)


def run(body: Callable[[], int | None]) -> int:
    """``body()``'s exit code (None: 0); an L2SError becomes ``error: MESSAGE`` on stderr and 2."""
    try:
        code = body()
    except L2SError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    return EXIT_OK if code is None else code
