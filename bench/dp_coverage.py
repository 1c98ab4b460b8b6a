"""How often the 95 % intervals of dp answers hold the true value, per column type and ε.

``python -m bench.dp_coverage`` opens a domain in process over 200 groups of
known size (300 people each by default, ``--group-size``; one row per person,
x a DOUBLE in [0, 100), n an INTEGER in [0, 9], both bounded to [0, 100] by the
policy) and runs fresh queries
``SELECT g, COUNT(*), SUM(x), AVG(x), VAR_POP(x), STDDEV_POP(x), SUM(n) … GROUP BY g``
at each ε. Each released group is one draw per column: the interval covers when
``|answer − truth| ≤ half-width``, with the half-width the answer reports
(``stockade.dp.ci95_half_width``, or ``stockade.dp.ci95_half_width_by_row`` for
a derived column); a NULL answer counts as a miss.

Whole-number columns (COUNT, SUM of an integer column) report the coverage of
their whole half-width (``stockade.dp.ci95_coverage``, at least 95 %): the
"claimed" column. The table gives coverage ± one binomial standard error.
The same measurement backs ``tests/test_dp_audit.py`` (class 5 of issue 12).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.dp_audit import (
    COVERAGE_COLUMNS,
    COVERAGE_GROUPS,
    COVERAGE_SIZE,
    Coverage,
    coverage,
    coverage_domain,
)

KINDS = {"count": "COUNT (whole)", "sum": "SUM (float)", "avg": "AVG (derived)",
         "var": "VAR_POP (derived)", "stddev": "STDDEV_POP (derived)",
         "sum_int": "SUM (integer, whole)"}
EPSILONS = (0.1, 1.0, 10.0)


def table(results: list[Coverage]) -> str:
    """The Markdown table of ``results`` (one row per column and ε)."""
    lines = ["| column | ε | draws | coverage | claimed |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {KINDS.get(r.column, r.column)} | {r.epsilon:g} | {r.draws} | "
                     f"{100 * r.rate:.2f} % ± {100 * r.se:.2f} | {100 * r.claimed:.2f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dp_coverage",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20,
                        help="queries per ε (200 draws each); default 20")
    parser.add_argument("--group-size", type=int, default=COVERAGE_SIZE,
                        help=f"people per group; default {COVERAGE_SIZE}")
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS),
                        help="comma-separated ε values; default 0.1,1,10")
    args = parser.parse_args(argv)
    epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
    started = time.perf_counter()
    results: list[Coverage] = []
    with tempfile.TemporaryDirectory() as tmp:
        with coverage_domain(Path(tmp), args.group_size) as (domain, truth):
            for epsilon in epsilons:
                found = coverage(domain, truth, epsilon, args.queries)
                results.extend(found[c] for c in COVERAGE_COLUMNS)
    by_column = sorted(results, key=lambda r: (COVERAGE_COLUMNS.index(r.column), r.epsilon))
    print(table(by_column))
    print(f"\n{COVERAGE_GROUPS} groups of {args.group_size} people, {args.queries} queries "
          f"per ε, {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
