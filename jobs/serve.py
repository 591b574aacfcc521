"""Serving job: deploy a steered model's OpenAI-compatible endpoint as a Ray Serve application.

    python jobs/serve.py l2s_data/serve/configs/tiny-llava.toml                    # local Ray, then exits
    python jobs/serve.py CONFIG --address auto --replicas 8 --host 0.0.0.0          # on a cluster

The entry point that ``l2s submit serve`` runs on a cluster through the Ray Jobs API. It
deploys the application, waits until every replica has loaded the model, prints where it
answers and exits: Ray Serve is detached, so the application keeps serving after the job ends
(until ``serve shutdown`` or ``serve delete NAME``). ``l2s serve CONFIG`` does the same in the
foreground and stops the application on Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._job import parser, run  # noqa: E402
from l2s_data.serve import deploy, load_serve_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = parser("Deploy a steered model on Ray Serve (OpenAI chat-completions API).", "TOML serving config")
    ap.add_argument("--address", default=None, help="Ray cluster to join (host:port or 'auto'); default: RAY_ADDRESS")
    ap.add_argument("--replicas", type=int, default=None, help="replicas (default: [serve] replicas)")
    ap.add_argument("--host", default=None, help="the HTTP proxy's address (default: [serve] host)")
    ap.add_argument("--port", type=int, default=None, help="the HTTP proxy's port (default: [serve] port)")
    args = ap.parse_args(argv)

    def body() -> None:
        cfg = load_serve_config(args.config)
        print("resolved config:", json.dumps(cfg.to_dict(), sort_keys=True))
        svc = deploy(cfg, address=args.address, host=args.host, port=args.port, replicas=args.replicas)
        print(f"serving {cfg.model_name} on {svc.replicas} replica(s) at {svc.url} (application {svc.name!r})")
        for mid in svc.model_ids:
            print(f"  model {mid}")

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
