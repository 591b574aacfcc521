"""Evaluation job: steer, generate and score every (method, alpha, sample) row a config asks for.

    python jobs/evaluate.py l2s_data/evaluate/configs/tiny-llava.toml --dry-run
    python jobs/evaluate.py l2s_data/evaluate/configs/tiny-llava.toml                # in-process
    python jobs/evaluate.py l2s_data/evaluate/configs/tiny-llava.toml --workers 2    # local Ray
    python jobs/evaluate.py CONFIG --workers 8 --address auto                       # on a cluster
    python jobs/evaluate.py l2s_data/evaluate/configs/tiny-llava.toml --report demo-out/report-eval
    python jobs/evaluate.py CONFIG --report DIR --no-plots                          # tables only

The same as ``l2s evaluate CONFIG [--workers N] [--address ADDR]`` (then ``l2s report eval
RUN``), and the entry point that ``l2s submit evaluate`` runs on a cluster through the Ray Jobs
API. It parses the arguments, calls :func:`l2s_data.evaluate.distributed.run_evaluation`, and
prints the resolved config, one line per worker and per committed batch, and a summary. Rows
already in the store are skipped, so a resubmitted job resumes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._job import add_ray_options, parser, print_workers, run  # noqa: E402
from l2s_data.evaluate import Evaluation, write_report  # noqa: E402
from l2s_data.evaluate.distributed import run_evaluation  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = parser("Steered generation and evaluation into an l2s-data store.", "TOML evaluation config")
    ap.add_argument("--dry-run", action="store_true", help="plan only: the run id and the missing rows")
    add_ray_options(ap, "unit")
    ap.add_argument("--report", type=Path, default=None, help="write the report into this folder afterwards")
    ap.add_argument("--no-plots", action="store_true", help="with --report: the tables without the PNG plots")
    args = ap.parse_args(argv)

    def body() -> None:
        ev = Evaluation.from_file(args.config)
        print("resolved config:", json.dumps(ev.config.to_dict(), sort_keys=True))
        print(f"run id: {ev.run_id}")
        if args.dry_run:
            p = ev.plan()
            print(f"rows {p.total_rows}, missing {p.missing_rows} in {len(p.units)} units")
            return
        r = run_evaluation(ev, workers=args.workers, address=args.address, cpus_per_worker=args.cpus_per_worker,
                           max_restarts=args.max_retries, max_task_retries=args.max_retries, on_start=print_workers,
                           on_done=lambda o: print(f"{o.method} alpha={o.alpha}: {o.samples} rows in "
                                                   f"{o.seconds:.2f} s", flush=True))
        for note in r.notes:
            print(note)
        print(f"computed {r.computed_rows} of {r.plan.total_rows} rows in {r.seconds:.1f} s")
        if args.report is not None:
            files = write_report(ev.store, ev.run_id, args.report, plots=not args.no_plots)
            print(f"report: {files.markdown}")

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
