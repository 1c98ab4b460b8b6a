"""Bias and coverage of federated VAR_POP and STDDEV_POP in the network's dp test setup.

    .venv/bin/python scripts/federated_variance.py [--runs 300]

Starts the three test domains of ``tests/network_fixtures.py`` (their own data, policies
and ε per query: 0.5, 0.4, 0.6) and a network over them, in a temporary directory, and asks
the network ``--runs`` times for VAR_POP(age), STDDEV_POP(tumor_size_mm), VAR_SAMP(age)
and STDDEV_POP(age) per test group, each run a fresh charge (its query differs by a
condition every row meets). Prints, per group and column, the truth (DuckDB on the union of
the domains' files), the mean of the noisy answers and its bias relative to the truth with
its standard error, the median, and how often the reported 95 % interval covered the truth.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from network_fixtures import (  # noqa: E402
    DOMAINS,
    connect,
    ground_truth,
    start_domain,
    start_network,
)

QUERY = ("SELECT test, var_pop(age) AS v, stddev_pop(tumor_size_mm) AS sd, "
         "var_samp(age) AS vs, stddev_pop(age) AS sda FROM {} WHERE age > -{} "
         "GROUP BY test ORDER BY test")
COLUMNS = ("v", "sd", "vs", "sda")
GROUPS = ("cervical", "colonoscopy", "mammography", "psa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        domains = {name: start_domain(root / name, name) for name in DOMAINS}
        server, url = start_network({name: d.url for name, d in domains.items()})
        try:
            for d in domains.values():  # an analyst whose owners granted the budget for it
                d.domain.store.add_user("vera", "analyst", "vera-password", {})
                d.domain.ledger.set_allowance("vera", "oncology", 100.0 * args.runs, 0.5)
            truth = {row[0]: dict(zip(COLUMNS, row[1:], strict=True)) for row in ground_truth(
                [d.parquet for d in domains.values()], QUERY.format("screenings", 1))}
            found: dict[tuple[str, str], list[tuple[float, float | None]]] = {
                (g, c): [] for g in GROUPS for c in COLUMNS}
            conn = connect(url, "vera", "vera-password")
            try:
                for i in range(1, args.runs + 1):
                    cur = conn.cursor()
                    cur.execute(QUERY.format("federated.oncology.screenings", i))
                    table = cur.fetch_arrow_table()
                    cur.close()
                    widths = {c: json.loads(table.schema.field(c).metadata[
                        b"stockade.dp.ci95_half_width_by_row"]) for c in COLUMNS}
                    for r, row in enumerate(table.to_pylist()):
                        if row["test"] in GROUPS and row["domain_count"] == 3:
                            for c in COLUMNS:
                                found[row["test"], c].append((row[c], widths[c][r]))
            finally:
                conn.close()
        finally:
            server.shutdown()
            for d in domains.values():
                d.stop()
    print(f"{args.runs} runs; bias = mean / truth - 1, SE its standard error")
    for c in COLUMNS:
        for g in GROUPS:
            values = [v for v, _ in found[g, c]]
            true = truth[g][c]
            mean = statistics.fmean(values)
            se = statistics.stdev(values) / math.sqrt(len(values))
            covered = statistics.fmean(w is not None and abs(v - true) <= w
                                       for v, w in found[g, c])
            print(f"{c:>3} {g:<12} truth {true:9.3f}  mean {mean:9.3f}  bias "
                  f"{mean / true - 1:+7.2%} ± {se / true:5.2%}  median "
                  f"{statistics.median(values):9.3f}  coverage {covered:6.1%}  n {len(values)}")


if __name__ == "__main__":
    main()
