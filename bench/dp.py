"""Differential privacy side by side: plain DuckDB, SmartNoise alone, Stockade ``dp``.

One process, one Parquet file per size, the same query
``SELECT grp, COUNT(*) AS n, AVG(x) AS ax FROM t GROUP BY grp`` (10 groups,
2 rows per privacy unit, ε = 0.5 per mechanism, δ = 1e-6):

- **plain DuckDB**: the query itself on the gateway's locked engine (no privacy);
- **SmartNoise alone**: ``snsql.PrivateReader`` over a DuckDB connection reading
  the same file, with its default settings (per-unit sampling, scale search on
  every call);
- **Stockade dp**: :class:`gateway.dp.PrivateQueries` on the engine, including
  the budget charge in the state store; the engine keeps a bounded snapshot of
  the file (at most ``max_rows_per_unit`` rows per unit, :mod:`gateway.snapshots`),
  so the query reads it and does not sample;
- **Stockade dp, sampled**: the same on an engine that keeps no snapshot (as for
  a live source such as PostgreSQL): every query samples per unit.

Every timed Stockade call is a fresh query (another user each time), never an
answer from the result cache; as in the server, users of one role share the checked
query and SmartNoise's rewrite of it. **Stockade dp, new SQL** is the same query with
a ``HAVING COUNT(*) > -i`` that changes every time (applied to the noisy answer, so
DuckDB's work is the same): nothing is reused but the noise scales. Times are
medians of ``--repeats`` runs after one warm-up. ``python -m bench.dp`` prints the
Markdown rows for docs/benchmarks.md and writes them to bench/results/dp.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from argon2 import PasswordHasher

import connectors
from gateway.dp import PrivateQueries
from gateway.engine import Engine
from gateway.ledger import Ledger
from gateway.snapshots import ContributionBound
from gateway.state import StateStore
from policy.loader import parse_policy
from policy.principal import Principal

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
QUERY = "SELECT grp, COUNT(*) AS n, AVG(x) AS ax FROM t GROUP BY grp"
EPSILON = 0.5
DELTA = 1e-6

POLICY = """\
version: 1
domain: {name: dpbench}
datasets:
  bench:
    tables:
      t:
        source: {format: parquet, path: PATH}
        privacy_unit: pid
        max_rows_per_unit: 2
        columns:
          x: {lower: 0, upper: 100}
roles:
  analyst:
    datasets:
      bench: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 1000000, delta: 0.5}}
"""


def make_data(rows: int) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"dp-{rows}.parquet"
    if not path.exists():
        con = duckdb.connect()
        con.execute(f"""
            COPY (SELECT i // 2 AS pid, (hash(i) % 10)::INTEGER AS grp,
                         ((i * 7) % 100)::DOUBLE AS x
                  FROM range({rows}) r(i)) TO '{path}' (FORMAT parquet)""")
        con.close()
    return path


def timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def smartnoise_alone(path: Path) -> Callable[[], Any]:
    from snsql import Privacy
    from snsql.metadata import Float, Int, Metadata, Table
    from snsql.sql.private_reader import PrivateReader
    from snsql.sql.reader.base import SqlReader
    from snsql.sql.reader.engine import Engine as SnEngine

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("CREATE SCHEMA bench")
    con.execute(f"CREATE VIEW bench.t AS SELECT * FROM '{path}'")

    def run_sql(sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = con.cursor()
        cur.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()

    class PlainReader(SqlReader):  # type: ignore[misc]
        """SmartNoise's SQL run as is on DuckDB (PostgreSQL's name rules, no rewrites)."""

        ENGINE = SnEngine.POSTGRES

        def __init__(self) -> None:
            super().__init__(self.ENGINE)

        @property
        def engine(self) -> str:
            return str(self.ENGINE)

        def execute(self, query: str, *ignore: Any, accuracy: bool = False) -> list[Any]:
            names, rows = run_sql(query)
            return [tuple(names), *rows]

    metadata = Metadata([Table("bench", "t", [Int("pid", is_key=True), Int("grp"),
                                              Float("x", lower=0.0, upper=100.0)],
                               max_ids=2)], engine="postgres")

    def run() -> Any:
        reader = PrivateReader(PlainReader(), metadata,
                               privacy=Privacy(epsilon=EPSILON, delta=DELTA))
        return reader.execute(QUERY.replace("FROM t", "FROM bench.t"))

    return run


def measure(rows: int, repeats: int) -> dict[str, float]:
    path = make_data(rows)
    with tempfile.TemporaryDirectory() as tmp:
        policy = parse_policy(POLICY.replace("PATH", str(path)), base_dir=str(path.parent))
        table = policy.datasets["bench"].tables["t"]
        assert table.privacy_unit is not None and table.max_rows_per_unit is not None
        bound = ContributionBound(table.privacy_unit, table.max_rows_per_unit)
        plan = connectors.get("parquet").plan(
            {"format": "parquet", "path": str(path)}, base_dir=path.parent, alias="src_t")
        engine = Engine(Path(tmp) / "engine")
        engine.add_table("bench", "t", plan, bound=bound)  # keeps a bounded snapshot
        engine.start()
        unbounded = Engine(Path(tmp) / "unbounded")
        unbounded.add_table("bench", "t", plan)  # no snapshot: every query samples
        unbounded.start()
        store = StateStore(Path(tmp) / "state", hasher=PasswordHasher(memory_cost=8192))
        ledger = Ledger(store)
        schemas = {("bench", "t"): engine.columns("bench", "t")}
        fast = PrivateQueries(engine, ledger)
        sampled = PrivateQueries(unbounded, ledger)
        counter = iter(range(1_000_000))

        def stockade(service: PrivateQueries) -> Callable[[], Any]:
            def run() -> Any:
                principal = Principal(f"user{next(counter)}", "analyst")
                plan = service.plan(QUERY, policy=policy, principal=principal,
                                    schemas=schemas, delta=DELTA)
                return service.execute(plan)
            return run

        def new_sql() -> Any:
            i = next(counter)
            principal = Principal(f"user{i}", "analyst")
            sql = QUERY + f" HAVING COUNT(*) > -{i}"
            plan = fast.plan(sql, policy=policy, principal=principal, schemas=schemas,
                             delta=DELTA)
            return fast.execute(plan)

        def plain() -> Any:
            return engine.execute('SELECT grp, COUNT(*) AS n, AVG(x) AS ax '
                                  'FROM "bench"."t" GROUP BY grp').read_all()

        result = {"rows": float(rows)}
        result["plain"] = timed(plain, repeats)
        result["stockade"] = timed(stockade(fast), repeats)
        result["stockade_sampled"] = timed(stockade(sampled), repeats)
        result["stockade_new_sql"] = timed(new_sql, repeats)
        result["smartnoise"] = timed(smartnoise_alone(path), max(2, repeats // 2))
        result["plain_again"] = timed(plain, repeats)
        store.close()
        engine.close()
        unbounded.close()
    return result


def _plain(r: dict[str, float]) -> float:
    return min(r["plain"], r["plain_again"])


def table(results: list[dict[str, float]]) -> str:
    """The table of the dp section (``python -m bench.dp`` prints it)."""
    lines = [
        "| rows | plain DuckDB | Stockade dp | SmartNoise alone | dp / plain "
        "| SmartNoise / dp | SmartNoise / plain | Stockade dp, sampled | Stockade dp, new SQL |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        plain = _plain(r)
        lines.append(
            f"| {int(r['rows']):,} | {plain:.1f} ms | {r['stockade']:.1f} ms "
            f"| {r['smartnoise']:.0f} ms | {r['stockade'] / plain:.2f}× "
            f"| {r['smartnoise'] / r['stockade']:.1f}× | {r['smartnoise'] / plain:.0f}× "
            f"| {r['stockade_sampled']:.0f} ms | {r['stockade_new_sql']:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def markdown(result: dict[str, Any]) -> str:
    """The dp section of docs/benchmarks.md."""
    return f"""## Differential privacy (`dp` mode)

A `dp` query through `gateway.dp.PrivateQueries` (the gateway's dp service, in the
benchmark's process: policy, SmartNoise's rewrite, the query on the locked engine, noise,
and the durable budget charge; no Flight, which the concurrency figures include) against
the same aggregate in plain DuckDB and against SmartNoise SQL driven directly on the same
data (`snsql.PrivateReader` over its own DuckDB connection, default settings), side by
side in one run (`bench/dp.py`). The query, over 10 groups, with 2 rows per privacy
unit, ε = {EPSILON} per mechanism and δ = {DELTA:g}:

```sql
{QUERY}
```

Medians of {result['repeats']} runs after one warm-up (SmartNoise: {max(2, result['repeats'] // 2)}),
every Stockade run a fresh query (another user each time), never a cached answer.

![dp](benchmarks-dp.png)

{table(result['results'])}
Goals: dp / plain ≤ 2×, SmartNoise / dp ≥ 10×. *Stockade dp* reads the engine's bounded
snapshot of the file (at most `max_rows_per_unit` rows per unit, drawn once per content
version); *sampled* is the same query on an engine without a snapshot, which samples per
unit in every query, as for a live source; values are clamped in both. *New SQL* is a
query never seen before (planned and rewritten by SmartNoise on the call).
"""  # noqa: E501


def headlines(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    out = []
    for r in result["results"]:
        rows = f"{int(r['rows']) / 1e6:g}M rows"
        out.append((f"dp: Stockade dp / plain DuckDB, {rows}", r["stockade"] / _plain(r), "≤ 2"))
        out.append((f"dp: SmartNoise alone / Stockade dp, {rows}",
                    r["smartnoise"] / r["stockade"], "≥ 10"))
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = result["results"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{int(r['rows']):,} rows" for r in results]
    series = (("plain DuckDB", [_plain(r) for r in results], "#999999"),
              ("Stockade dp", [r["stockade"] for r in results], "#2a6f97"),
              ("SmartNoise alone", [r["smartnoise"] for r in results], "#c0392b"))
    width = 0.27
    for k, (name, values, color) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(results))]
        bars = ax.bar(xs, values, width, label=name, color=color)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.1f}" for v in values],
                     fontsize=7)
    ax.set_xticks(range(len(results)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms, median (log scale)")
    ax.set_title("dp aggregate, 10 groups (lower is better)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    results = [measure(rows, args.repeats) for rows in args.rows]
    text = table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dp.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
