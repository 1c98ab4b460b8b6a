"""The cost of the policy: planning a query against running it, on synthetic screenings.

For a simple and a complex query (a CTE and five joins across patients,
screenings and derived tables, with filters and aggregates) this measures, in
one process and alternately:

- ``plan``: :func:`policy.pipeline.plan_query` from the analyst's SQL text to the
  rewritten SQL (parse, resolve, check, qualify, rewrite, limit), with no plan
  cache, for a researcher under the policy of :mod:`bench.screenings`;
- ``execute``: DuckDB running that rewritten SQL to a complete Arrow table, on a
  cursor of the same locked engine the gateway uses, over its Parquet files.

Both are medians of ``n`` runs after warm-up; the ratio plan / execute is the
policy's overhead relative to the work the query asks for.

Run alone with ``python -m bench.policy_overhead`` (prints the figures);
``python -m bench`` runs it too and writes it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb

from bench.screenings import POLICY, generate
from gateway.domain import build_engine
from policy.loader import load_policy
from policy.pipeline import plan_query
from policy.principal import Principal

RESULTS = Path(__file__).resolve().parent / "results"
PRINCIPAL = Principal("rita", "researcher")

SIMPLE = "SELECT site, count(*) AS n FROM oncology.screenings GROUP BY site"

COMPLEX = """\
WITH site_stats AS (
    SELECT site, count(*) AS screenings, avg(age) AS mean_age
    FROM oncology.screenings
    GROUP BY site
), test_stats AS (
    SELECT test, count(*) FILTER (WHERE result = 'positive') AS positives, count(*) AS n
    FROM screenings
    GROUP BY test
), yearly AS (
    SELECT site, year(screened_on) AS yr, count(*) AS n
    FROM screenings
    WHERE screened_on >= DATE '2020-01-01'
    GROUP BY site, year(screened_on)
), cohort AS (
    SELECT site, sex, count(*) AS patients, avg(2024 - birth_year) AS mean_age
    FROM oncology.patients
    GROUP BY site, sex
)
SELECT s.site, s.test, y.yr, c.sex,
       count(*) AS positives,
       round(avg(s.tumor_size_mm), 1) AS mean_tumor_mm,
       max(ss.mean_age) AS site_mean_age,
       max(ts.positives * 1.0 / ts.n) AS test_positive_rate,
       max(c.patients) AS cohort_patients,
       max(z.zones) AS zip_zones
FROM screenings AS s
JOIN site_stats AS ss ON ss.site = s.site
JOIN test_stats AS ts ON ts.test = s.test
JOIN yearly AS y ON y.site = s.site AND y.yr = year(s.screened_on)
JOIN cohort AS c ON c.site = s.site
JOIN (SELECT site, count(DISTINCT zip) AS zones FROM patients WHERE birth_year < 1990
      GROUP BY site) AS z ON z.site = s.site
WHERE s.result = 'positive' AND s.age BETWEEN 40 AND 75
GROUP BY s.site, s.test, y.yr, c.sex
HAVING count(*) >= 5
ORDER BY s.site, s.test, y.yr, c.sex
"""

QUERIES: tuple[tuple[str, str, str], ...] = (
    ("simple", "`SELECT site, count(*) … GROUP BY site` on screenings", SIMPLE),
    ("complex", "CTE (4 parts) + 5 joins over patients, screenings and derived tables, "
                "filters, GROUP BY, HAVING", COMPLEX),
)  # fmt: skip


@dataclass(frozen=True)
class Overhead:
    """The medians for one query."""

    name: str
    description: str
    plan_ms: float
    execute_ms: float
    rows: int
    n: int

    @property
    def ratio(self) -> float:
        return self.plan_ms / self.execute_ms


def prepare(rows: int) -> Path:
    """A domain (policy and data) with ``rows`` screenings, generated once."""
    directory = RESULTS / f"screenings-{rows}"
    marker = directory / "data" / f".rows-{rows}"
    if not marker.exists():
        print(f"generating {rows:,} screenings in {directory / 'data'} ...", flush=True)
        generate(directory, rows)
        marker.touch()
    (directory / "policy.yaml").write_text(POLICY)
    return directory


def measure(rows: int = 1_000_000, n: int = 30, warmup: int = 3) -> list[Overhead]:
    """Plan and execute each query ``warmup`` + ``n`` times, alternately."""
    directory = prepare(rows)
    policy = load_policy(directory / "policy.yaml")
    engine = build_engine(policy, directory / "engine")
    try:
        schemas = {key: engine.columns(*key) for key in engine.tables()}
        results = []
        for name, description, sql in QUERIES:
            plan_s: list[float] = []
            execute_s: list[float] = []
            result_rows = 0
            for i in range(warmup + n):
                started = time.perf_counter()
                plan = plan_query(sql, policy=policy, principal=PRINCIPAL, schemas=schemas)
                planned = time.perf_counter()
                cur = engine.cursor()
                try:
                    started_execute = time.perf_counter()
                    table = cur.execute(plan.sql).to_arrow_table()
                    executed = time.perf_counter()
                finally:
                    cur.close()
                result_rows = table.num_rows
                if i >= warmup:
                    plan_s.append(planned - started)
                    execute_s.append(executed - started_execute)
            results.append(Overhead(name, description, statistics.median(plan_s) * 1e3,
                                    statistics.median(execute_s) * 1e3, result_rows, n))
        return results
    finally:
        engine.close()


def versions() -> str:
    return f"sqlglot {importlib.metadata.version('sqlglot')}, duckdb {duckdb.__version__}"


def to_json(results: list[Overhead], rows: int) -> dict[str, Any]:
    return {"rows": rows, "queries": [asdict(r) for r in results]}


def from_json(data: dict[str, Any]) -> list[Overhead]:
    return [Overhead(**q) for q in data["queries"]]


def markdown_rows(results: list[Overhead]) -> str:
    """The rows of the "Policy overhead" table in docs/benchmarks.md."""
    return "\n".join(
        f"| {r.name}: {r.description} | {r.plan_ms:.2f} ms | {r.execute_ms:.2f} ms | "
        f"{r.ratio:.2f}× | {r.rows} |"
        for r in results
    )


def markdown(data: dict[str, Any]) -> str:
    """The policy overhead section of docs/benchmarks.md."""
    results = from_json(data)
    return f"""## Policy overhead

The time `policy.pipeline.plan_query` takes from the analyst's SQL to the rewritten SQL
(parse, resolve tables, check functions, qualify columns, rewrite, limit; no plan cache)
against the time DuckDB takes to run that rewritten SQL to a complete Arrow table, on the
synthetic patients and screenings of `bench/screenings.py` ({data['rows']:,} screenings,
Parquet) under its policy for a researcher (a mask, a row filter, hidden columns), on a
cursor of the gateway's locked engine. Medians of {results[0].n} runs each, alternately,
after 3 warm-up runs (`bench/policy_overhead.py`).

![policy overhead](benchmarks-policy.png)

| query | plan_query, median | DuckDB execution, median | plan / execute | result rows |
|---|---:|---:|---:|---:|
{markdown_rows(results)}
"""


def headlines(data: dict[str, Any]) -> list[tuple[str, float, str]]:
    return [(f"policy: plan / execute, {r.name} query", r.ratio, "") for r in from_json(data)]


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overhead = from_json(data)
    fig, ax = plt.subplots(figsize=(6, 3))
    names = [o.name for o in overhead]
    width = 0.38
    xs = range(len(names))
    ax.bar([x - width / 2 for x in xs], [o.plan_ms for o in overhead], width,
           label="plan_query (policy)", color="#2a6f97")
    ax.bar([x + width / 2 for x in xs], [o.execute_ms for o in overhead], width,
           label="DuckDB execution", color="#999999")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("ms (median)")
    ax.set_title("Policy overhead on synthetic screenings", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_overhead")
    parser.add_argument("--rows", type=int, default=1_000_000, help="screenings")
    parser.add_argument("-n", type=int, default=30, help="timed runs per query")
    args = parser.parse_args(argv)
    results = measure(args.rows, args.n)
    print(f"policy overhead on {args.rows:,} screenings ({versions()}), median of {args.n}")
    print("| query | plan | execute | plan / execute | result rows |")
    print(markdown_rows(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
