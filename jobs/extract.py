"""Extraction job: compute every missing (recipe, view, position, layer, sample) key of a config.

    python jobs/extract.py l2s_data/extract/configs/tiny-llava.toml --dry-run
    python jobs/extract.py l2s_data/extract/configs/tiny-llava.toml
    python jobs/extract.py l2s_data/extract/configs/llava-1.5-7b-reference.toml --workers 0

The same as ``l2s extract CONFIG [--dry-run] [--workers 0]``: a thin entry point that Ray job
submission can run as is (``ray job submit -- python jobs/extract.py CONFIG``). It parses the
arguments, calls :class:`l2s_data.extract.Extraction`, prints the resolved config and a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2s_data.errors import L2SError  # noqa: E402
from l2s_data.extract import Extraction  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Extract contrastive activations into an l2s-data store.")
    ap.add_argument("config", type=Path, help="TOML extraction config")
    ap.add_argument("--dry-run", action="store_true", help="plan only: missing keys, bytes, time estimate")
    ap.add_argument("--workers", type=int, default=0, help="0 = in-process (the only mode in this release)")
    args = ap.parse_args(argv)
    try:
        if args.workers != 0:
            raise L2SError(f"--workers {args.workers}: only --workers 0 (in-process) is available in this release")
        ex = Extraction.from_file(args.config)
        print("resolved config:", json.dumps(ex.config.to_dict(), sort_keys=True))
        if args.dry_run:
            dr = ex.dry_run()
            p = dr.plan
            print(f"samples {p.total_samples}, to compute {p.samples_to_compute} in {len(p.shards)} shards, "
                  f"missing keys {p.missing_keys}, bytes {p.bytes}, estimated seconds "
                  f"{'unknown' if dr.seconds is None else round(dr.seconds, 1)} ({dr.calibration})")
            return 0
        r = ex.run(on_done=lambda o: print(f"shard {o.shard_id}: {o.samples} samples, {o.keys} keys, "
                                           f"{o.quarantined} quarantined, compute {o.compute_s:.2f} s, "
                                           f"write {o.write_s:.2f} s", flush=True))
        print(f"computed {r.computed_samples} samples, {r.written_keys} keys, quarantined {r.quarantined}, "
              f"{r.seconds:.1f} s; recipes {dict(r.recipe_ids)}")
        return 0
    except L2SError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
