"""Extraction job: compute every missing (recipe, view, position, layer, sample) key of a config.

    python jobs/extract.py l2s_data/extract/configs/tiny-llava.toml --dry-run
    python jobs/extract.py l2s_data/extract/configs/tiny-llava.toml                # in-process
    python jobs/extract.py l2s_data/extract/configs/tiny-llava.toml --workers 2    # local Ray
    python jobs/extract.py CONFIG --workers 8 --address auto                       # on a cluster

The same as ``l2s extract CONFIG [--dry-run] [--workers N] [--address ADDR]``, and the entry
point that ``l2s submit extract`` runs on a cluster through the Ray Jobs API. It parses the
arguments, calls :func:`l2s_data.extract.distributed.run_extraction`, and prints the resolved
config, one line per worker and per committed shard, and a summary: plain lines, because a
job's output is read back with ``l2s jobs logs``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._job import add_ray_options, parser, print_workers, run  # noqa: E402
from l2s_data.extract import Extraction  # noqa: E402
from l2s_data.extract.distributed import run_extraction  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = parser("Extract contrastive activations into an l2s-data store.", "TOML extraction config")
    ap.add_argument("--dry-run", action="store_true", help="plan only: missing keys, bytes, time estimate")
    add_ray_options(ap, "shard")
    args = ap.parse_args(argv)

    def body() -> None:
        ex = Extraction.from_file(args.config)
        print("resolved config:", json.dumps(ex.config.to_dict(), sort_keys=True), flush=True)
        if args.dry_run:
            dr = ex.dry_run()
            p = dr.plan
            print(f"samples {p.total_samples}, to compute {p.samples_to_compute} in {len(p.shards)} shards, "
                  f"missing keys {p.missing_keys}, bytes {p.bytes}, estimated seconds "
                  f"{'unknown' if dr.seconds is None else round(dr.seconds, 1)} ({dr.calibration})")
            return

        def on_progress(p) -> None:
            if p.last is not None:
                o = p.last.outcome
                retry = f", attempt {p.last.attempt + 1}" if p.last.attempt else ""
                print(f"shard {o.shard_id} committed: {o.samples} samples, {o.keys} keys, {o.quarantined} "
                      f"quarantined{retry}; {p.shards_done}/{p.shards_total} shards, {p.samples_per_s:.2f} "
                      f"samples/s, retried {p.retried}, failed {p.failed}", flush=True)

        r = run_extraction(ex, workers=args.workers, address=args.address, cpus_per_worker=args.cpus_per_worker,
                           max_restarts=args.max_retries, max_task_retries=args.max_retries,
                           on_start=print_workers, on_progress=on_progress)
        print(f"computed {r.computed_samples} samples, {r.written_keys} keys, quarantined {r.quarantined}, "
              f"{r.seconds:.1f} s; recipes {dict(r.recipe_ids)}", flush=True)

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
