"""Training job: train one L2S predictor, or run a sweep, from an l2s-data store.

    python jobs/train.py l2s_data/train/configs/tiny-llava.toml
    python jobs/train.py l2s_data/train/configs/tiny-llava-sweep.toml --sweep
    ray job submit --working-dir . -- python jobs/train.py CONFIG --sweep --ray-address auto

The same as ``l2s train CONFIG`` / ``l2s sweep CONFIG``: a thin entry point that Ray job
submission can run as is. It parses the arguments, calls :mod:`l2s_data.train`, and prints the
resolved config and one JSON line with the result (for a sweep, every field of its
:class:`~l2s_data.train.sweep.SweepResult`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._job import parser, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = parser("Train L2S predictors from an l2s-data store.", "TOML training config (or sweep config with --sweep)")
    ap.add_argument("--sweep", action="store_true", help="the config is a sweep: run it on Ray Tune")
    ap.add_argument("--ray-address", default=None, help="sweep: join this Ray cluster ('auto', host:port)")
    args = ap.parse_args(argv)

    def body() -> None:
        # imported here, each for its own branch: a training needs neither Ray Tune nor transformers
        if args.sweep:
            from l2s_data.train.sweep import load_sweep_config, run_sweep

            cfg = load_sweep_config(args.config)
            print("resolved config:", json.dumps(cfg.to_dict(), sort_keys=True))
            res = run_sweep(cfg, base_dir=".", ray_address=args.ray_address)
            print(json.dumps(dataclasses.asdict(res)))  # sweep_id, run_ids, best_run_id, stopped, ...
        else:
            from l2s_data.train import load_train_config, train

            cfg = load_train_config(args.config)
            print("resolved config:", json.dumps(cfg.to_dict(), sort_keys=True))
            r = train(cfg)
            print(json.dumps({"run_id": r.run_id, "artifact": str(r.artifact), "snapshot_id": r.meta.snapshot_id,
                              **{k: v for k, v in r.metrics.items() if not isinstance(v, dict)}}))

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
