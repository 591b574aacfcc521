"""`l2s serve CONFIG`: thin wrapper over l2s_data.serve (deploy, print where it answers, wait)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from l2s_data.cli._common import console, fail, interrupted, note, say
from l2s_data.errors import L2SError, ServeError


def serve(
    config: Path = typer.Argument(..., help="TOML serving config (see l2s_data/serve/configs/tiny-llava.toml)."),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster to join (HOST:6379 or 'auto'); default: $RAY_ADDRESS, "
                                               "else a local Ray started for the service."),
    replicas: Optional[int] = typer.Option(None, "--replicas", min=1,
                                           help="Replicas: one GPU each when the config's device is CUDA, else "
                                                "serve.cpus_per_replica CPUs each. Default: the config's serve.replicas."),
    host: Optional[str] = typer.Option(None, "--host", help="Address the HTTP proxy listens on. Default: the config's "
                                                            "serve.host (127.0.0.1: this machine only)."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port. Default: the config's serve.port (8000)."),
) -> None:
    """Serve the config's model with its steering methods: the OpenAI chat-completions API on Ray Serve.

    Each request chooses its method and alpha in the body (`extra_body={"method": "l2s", "alpha": 2.2}` with the openai client) or by model id (`GET /v1/models` lists one per method). Runs until Ctrl-C (or SIGTERM), then deletes the application (and stops a local Ray it started), waiting at most 45 s for Ray Serve to confirm it."""
    from l2s_data.serve import deploy, load_serve_config
    from l2s_data.serve.stopping import STOP_TIMEOUT_S, wait_for_stop_signal

    try:
        cfg = load_serve_config(config)
        cfg.check_files()
        with console.status("starting Ray Serve and loading the model in every replica..."):
            svc = deploy(cfg, address=address, host=host, port=port, replicas=replicas)
    except L2SError as err:
        fail(err, code=2)
    try:
        say(f"serving {cfg.model_name} on {svc.replicas} replica(s) at {svc.url}")
        for mid in svc.model_ids:
            say(f"  model {mid}")
        say(f"  try: curl {svc.url}/chat/completions -H 'Content-Type: application/json' -d "
            f"'{{\"model\": \"{svc.model_ids[0]}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
        if (host or cfg.serve.host) not in ("127.0.0.1", "localhost", "::1"):
            note("the endpoint has no authentication: put it behind your own gateway before exposing it")
        say("Ctrl-C stops it")
        got = wait_for_stop_signal()
    except KeyboardInterrupt:  # Ctrl-C before the wait had taken over SIGINT
        got = "SIGINT"
    say(f"{got}: deleting application {svc.name!r} (waiting at most {STOP_TIMEOUT_S:g} s)")
    try:
        confirmed = svc.stop(STOP_TIMEOUT_S)
    except ServeError as err:
        fail(err)
    except (KeyboardInterrupt, SystemExit):  # a second Ctrl-C (or SIGTERM, which Ray turns into an exit)
        interrupted(f"stopped before Ray Serve confirmed the deletion of application {svc.name!r}: check with "
                    f"`serve status`, or delete it with `serve delete {svc.name}`")
    if not confirmed:
        say(f"error: Ray Serve did not confirm the deletion of application {svc.name!r} within {STOP_TIMEOUT_S:g} s; "
            f"it goes on deleting it: check with `serve status`, or delete it with `serve delete {svc.name}`",
            stderr=True)
        # Leave now: Ray's own exit hook would wait on the connection the deletion still holds.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    say("stopped")


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s serve`` on ``root``."""
    root.command("serve")(serve)
