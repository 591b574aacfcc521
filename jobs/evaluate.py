"""Evaluation job: steer, generate and score every (method, alpha, sample) row a config asks for.

    python jobs/evaluate.py l2s_data/evaluate/configs/tiny-llava.toml --dry-run
    python jobs/evaluate.py l2s_data/evaluate/configs/tiny-llava.toml
    python jobs/evaluate.py l2s_data/evaluate/configs/tiny-llava.toml --report demo-out/report-eval

The same as ``l2s evaluate CONFIG`` (then ``l2s report eval RUN``): a thin entry point that Ray
job submission can run as is (``ray job submit -- python jobs/evaluate.py CONFIG``). It parses
the arguments, calls :class:`l2s_data.evaluate.Evaluation`, prints the resolved config and a
summary. Rows already in the store are skipped, so a resubmitted job resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2s_data.errors import ConfigError, L2SError  # noqa: E402
from l2s_data.evaluate import Evaluation, write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Steered generation and evaluation into an l2s-data store.")
    ap.add_argument("config", type=Path, help="TOML evaluation config")
    ap.add_argument("--dry-run", action="store_true", help="plan only: the run id and the missing rows")
    ap.add_argument("--workers", type=int, default=0, help="0 = in-process (the only mode in this release)")
    ap.add_argument("--report", type=Path, default=None, help="write the report into this folder afterwards")
    args = ap.parse_args(argv)
    try:
        if args.workers != 0:
            raise ConfigError(f"--workers {args.workers}: only --workers 0 (in-process) is available in this release")
        ev = Evaluation.from_file(args.config)
        print("resolved config:", json.dumps(ev.config.to_dict(), sort_keys=True))
        print(f"run id: {ev.run_id}")
        if args.dry_run:
            p = ev.plan()
            print(f"rows {p.total_rows}, missing {p.missing_rows} in {len(p.units)} units")
            return 0
        r = ev.run(on_done=lambda o: print(f"{o.method} alpha={o.alpha}: {o.samples} rows in {o.seconds:.2f} s",
                                           flush=True))
        print(f"computed {r.computed_rows} of {r.plan.total_rows} rows in {r.seconds:.1f} s")
        if args.report is not None:
            files = write_report(ev.store, ev.run_id, args.report)
            print(f"report: {files.markdown}")
        return 0
    except L2SError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
