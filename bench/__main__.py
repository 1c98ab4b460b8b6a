"""`make bench`: Stockade side by side with its baselines, written to docs/benchmarks.md.

Parts (``--only NAME[,NAME]`` runs some of them; all by default):

- ``streaming``: a whole TPC-H table streamed by the gateway, a bare pyarrow Flight
  server and in-process DuckDB: MB/s, rows/s, peak memory (`bench/streaming.py`);
- ``latency``: small queries through ADBC, gateway against bare Flight, p50 and p99
  (`bench/latency.py`);
- ``overhead``: the policy's planning against DuckDB running the plan
  (`bench/policy_overhead.py`);
- ``dp``: a dp GROUP BY with a new WHERE each call on 1M and 10M rows, through ADBC
  against a running gateway, against plain DuckDB and SmartNoise alone, with the
  stage-by-stage profile of a dp call (`bench/dp.py`, `bench/dp_profile.py`);
- ``concurrency``: 1, 4 and 16 analysts running a mix for a fixed time, gateway against
  bare Flight; fails on any failed query (`bench/concurrency.py`);
- ``federation``: a network node over 1, 2, 4 and 8 domains (`bench/federation.py`);
- ``postgres``: a full-table SELECT through the postgres connector against the same
  rows exported to Parquet, on a PostgreSQL 15 server it starts (`bench/postgres.py`).

Each part's figures are recorded in bench/figures.json and docs/benchmarks.md is
rewritten from it with its plots (`bench/report.py`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import concurrency, federation, latency, machine, policy_overhead, report, streaming
from bench import dp as dp_bench
from bench import postgres as postgres_bench
from bench import servers as bench_servers

ROOT = Path(__file__).resolve().parents[1]
SERVED = ("streaming", "latency", "concurrency")  # the parts that share the two servers


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in report.PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(report.PARTS)}")
    return names


def _counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", type=_names, metavar="NAME[,NAME]",
                        help=f"run only these parts ({', '.join(report.PARTS)})")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite the document from the figures file")
    parser.add_argument("--figures", type=Path, default=ROOT / "bench" / "figures.json",
                        help="the figures file (default: bench/figures.json)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="where benchmarks.md and its plots go (default: docs/)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results",
                        help="data and servers' files of streaming, latency and concurrency")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="TPC-H scale factor of lineitem (default 1: 6M rows)")
    parser.add_argument("--repeats", type=int, default=5, help="streams per contender")
    parser.add_argument("--latency-n", type=int, default=500, help="calls per query and server")
    parser.add_argument("--concurrency-levels", type=_counts, default=list(concurrency.LEVELS),
                        metavar="N[,N]", help="numbers of concurrent analysts (default 1,4,16)")
    parser.add_argument("--concurrency-duration", type=float, default=10.0,
                        help="seconds per level and server")
    parser.add_argument("--overhead-rows", type=int, default=1_000_000,
                        help="screenings for the policy overhead")
    parser.add_argument("--overhead-n", type=int, default=30,
                        help="timed runs per query for the policy overhead")
    parser.add_argument("--dp-rows", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="rows of the dp benchmark's data sets")
    parser.add_argument("--dp-repeats", type=int, default=5,
                        help="rounds of the dp benchmark (3 calls of each fast contender each)")
    parser.add_argument("--dp-profile-calls", type=int, default=15,
                        help="dp calls profiled stage by stage per data set (0: none)")
    parser.add_argument("--dp-values", type=dp_bench.values_list, default=["discrete"],
                        metavar="KIND[,KIND]",
                        help="values of x in the dp data sets: discrete (100 values, the "
                             "default), continuous (10^6 values); see bench/dp.py")
    parser.add_argument("--federation-rows", type=int, default=200_000,
                        help="screenings per domain of the federation benchmark")
    parser.add_argument("--federation-n", type=int, default=50,
                        help="timed runs per figure of the federation benchmark")
    parser.add_argument("--federation-warmup", type=int, default=10)
    parser.add_argument("--postgres-rows", type=int, default=2_000_000,
                        help="rows of the postgres connector benchmark's table")
    parser.add_argument("--postgres-repeats", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        report.render(args.figures, args.docs)
        print(f"wrote {args.docs / 'benchmarks.md'}")
        return 0
    selected = args.only or list(report.PARTS)
    about = machine.describe()
    print(f"benchmarks on {machine.text(about)}", flush=True)

    def run(part: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"{part} ...", flush=True)
        load_before, started = machine.load(), time.perf_counter()
        result = measure()
        if part == "concurrency" and concurrency.errors(result):
            print("FAILED: queries failed under concurrency:\n  "
                  + "\n  ".join(concurrency.errors(result)), file=sys.stderr, flush=True)
            raise SystemExit(1)
        report.record(args.figures, part, result, about, load_before,
                      time.perf_counter() - started)
        return result

    served = [part for part in SERVED if part in selected]
    if served:
        data = bench_servers.make_lineitem(args.scale, args.results)
        analysts = max(args.concurrency_levels) if "concurrency" in served else 0
        with bench_servers.running(args.results / "domain", data, analysts) as s:
            if "streaming" in served:
                run("streaming", lambda: streaming.measure(s, args.repeats, args.scale))
            if "latency" in served:
                run("latency", lambda: latency.measure(s, args.latency_n))
            if "concurrency" in served:
                run("concurrency", lambda: concurrency.measure(
                    s, args.concurrency_levels, args.concurrency_duration))
    if "overhead" in selected:
        run("overhead", lambda: policy_overhead.to_json(
            policy_overhead.measure(args.overhead_rows, args.overhead_n), args.overhead_rows))
    if "dp" in selected:
        run("dp", lambda: {"repeats": args.dp_repeats, "results": [
            dp_bench.measure(rows, args.dp_repeats,  # profiled on the first kind of values
                             args.dp_profile_calls if values == args.dp_values[0] else 0,
                             values)
            for values in args.dp_values for rows in args.dp_rows]})
    if "federation" in selected:
        run("federation", lambda: federation.to_json(federation.measure(
            args.federation_rows, args.federation_n, args.federation_warmup)))
    if "postgres" in selected:
        run("postgres", lambda: postgres_bench.measure(args.postgres_rows, args.postgres_repeats))
    text = report.render(args.figures, args.docs)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
