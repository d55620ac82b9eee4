"""Every benchmark in one command (`make bench`): ingest, freshness, worker, growth, memory,
queries. Each writes `loadtest/results/<name>.json` (with its `targets`) and a PNG chart; this
prints all targets together at the end.

    python -m loadtest.bench [--quick] [--only ingest,worker,queries] [--datasets DIR]

The queries benchmark's stores (10 million pageviews over 30 days, and 365 days for growth)
take most of an hour each to build on a 2-core machine: they are built once under `--datasets`
(default .rollup/bench-datasets) and reused by later runs; delete the directory to rebuild.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from loadtest import ingest_bench, query_bench, worker_bench
from loadtest.results import RESULTS, Target, print_targets

SUITES = ("ingest", "worker", "queries")
DATASETS = Path(__file__).resolve().parent.parent / ".rollup" / "bench-datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SUITES), help=",".join(SUITES))
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test")
    parser.add_argument(
        "--datasets", type=Path, default=DATASETS, help="where the query stores are kept"
    )
    args = parser.parse_args()
    chosen = args.only.split(",")
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    if "ingest" in chosen:
        ingest_args = argparse.Namespace(
            seconds=5 if args.quick else 20,
            concurrency=64,
            runs=1 if args.quick else 3,
            fresh_rate=5000,
            fresh_warmup=3 if args.quick else 10,
            fresh_samples=5 if args.quick else 20,
        )
        results += ingest_bench.run(ingest_args)
    if "worker" in chosen:
        worker_args = argparse.Namespace(
            hits=50_000 if args.quick else 1_000_000,
            growth_hits=20_000 if args.quick else 300_000,
            naive_hits=5_000 if args.quick else 50_000,
            runs=1 if args.quick else 3,
            only="",
        )
        results += worker_bench.run(worker_args)
    if "queries" in chosen:
        quick = ["--pageviews", "200000", "--rounds", "5", "--growth-rounds", "3"]
        quick += ["--growth-pageviews-per-day", "2000"]
        sizes = quick if args.quick else []
        query_args = query_bench.parser().parse_args(
            [*sizes, "--growth", "--datasets", str(args.datasets)]
        )
        queries = query_bench.run(query_args)
        growth = queries.pop("growth", None)
        results += [queries] + ([growth] if growth else [])
    print(f"\nall benchmarks ({time.monotonic() - started:.0f} s); results in {RESULTS}")
    for result in results:
        print_targets(result["benchmark"], [Target(**t) for t in result["targets"]])
    (RESULTS / "summary.json").write_text(
        json.dumps({r["benchmark"]: r["targets"] for r in results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
