"""What the catalog's limits cost: guarded statements against bare DuckDB calls, in one run.

    python benchmarks/sql_limits.py              # 300 small statements, a 5M-row result
    python benchmarks/sql_limits.py --rows 20000000 --small 1000

Every catalog statement runs on a worker thread while the caller waits on an event (so that
the caller can enforce the time limit and see Ctrl-C). This prints, as ratios to the same
work done directly on the catalog's own DuckDB connection in the same process:

- a small statement (``SELECT 1``) through ``Catalog.query``, against ``con.sql(...).to_arrow_table()``;
- a large result streamed through ``Catalog.stream`` (one worker hand-off a batch), against
  ``to_arrow_table()`` of the same query;
- the same result through ``Catalog.head(..., 1000)``, which keeps 1000 rows and counts the rest.

Each figure is the best of ``--repeats`` rounds, timed round robin. A ratio above 1 is slower.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable


def _best(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000, help="rows of the large result")
    ap.add_argument("--small", type=int, default=300, help="small statements per round")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each figure is the best one")
    args = ap.parse_args()

    from l2s_data.store import Store

    with tempfile.TemporaryDirectory(prefix="l2s-bench-sql-") as root:
        store = Store.open(f"{root}/store", create=True)
        big = f"SELECT i, i * 2 AS j FROM range({args.rows}) t(i)"
        with store.catalog() as cat:
            con = cat.con

            def stream() -> int:
                with cat.stream(big) as rows:
                    return sum(b.num_rows for b in rows)

            t = _best({
                "small guarded": lambda: [cat.query("SELECT 1 AS x") for _ in range(args.small)],
                "small direct": lambda: [con.sql("SELECT 1 AS x").to_arrow_table() for _ in range(args.small)],
                "stream guarded": stream,
                "head guarded": lambda: cat.head(big, 1000),
                "table direct": lambda: con.sql(big).to_arrow_table(),
            }, args.repeats)

    per = 1e3 / args.small
    print(f"small statement: guarded {t['small guarded'] * per:.2f} ms, direct {t['small direct'] * per:.2f} ms, "
          f"ratio {t['small guarded'] / t['small direct']:.2f}")
    for name in ("stream guarded", "head guarded"):
        print(f"{args.rows} rows, {name}: {t[name]:.3f} s against {t['table direct']:.3f} s direct, "
              f"ratio {t[name] / t['table direct']:.2f}")


if __name__ == "__main__":
    main()
