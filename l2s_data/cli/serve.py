"""`l2s serve CONFIG`: thin wrapper over l2s_data.serve (deploy, print where it answers, wait)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from l2s_data.cli._common import console, fail, note, say
from l2s_data.errors import L2SError


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

    Each request chooses its method and alpha in the body (`extra_body={"method": "l2s", "alpha": 2.2}` with the openai client) or by model id (`GET /v1/models` lists one per method). Runs until Ctrl-C (or SIGTERM), then deletes the application (and stops a local Ray it started)."""
    from l2s_data.serve import deploy, load_serve_config

    try:
        cfg = load_serve_config(config)
        cfg.check_files()
        with console.status("starting Ray Serve and loading the model in every replica..."):
            svc = deploy(cfg, address=address, host=host, port=port, replicas=replicas)
    except L2SError as err:
        fail(err, code=2)
    say(f"serving {cfg.model_name} on {svc.replicas} replica(s) at {svc.url}")
    for mid in svc.model_ids:
        say(f"  model {mid}")
    say(f"  try: curl {svc.url}/chat/completions -H 'Content-Type: application/json' -d "
        f"'{{\"model\": \"{svc.model_ids[0]}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
    if (host or cfg.serve.host) not in ("127.0.0.1", "localhost", "::1"):
        note("the endpoint has no authentication: put it behind your own gateway before exposing it")
    say("Ctrl-C stops it")
    stop = threading.Event()
    # SIGTERM (kill PID, a service manager) stops it the same way: the application deleted, a
    # local Ray started here shut down with it, rather than left running.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        svc.stop()
        say("stopped")


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s serve`` on ``root``."""
    root.command("serve")(serve)
