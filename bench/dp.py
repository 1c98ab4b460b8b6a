"""Differential privacy side by side: plain DuckDB, SmartNoise alone, Stockade ``dp``.

One process, one Parquet file per size, the query
``SELECT grp, COUNT(*) AS n, AVG(x) AS ax FROM t WHERE x > c GROUP BY grp`` (10 groups,
2 rows per privacy unit, ε = 0.5 per mechanism, δ = 1e-6) with a **new constant c
for every call** (:func:`query_for`), so that no plan, schema or paid answer is ever
reused, as an analyst exploring data sees it:

- **plain DuckDB**: the query in this process on a DuckDB connection reading the file
  (:data:`bench.servers.THREADS` threads, no privacy);
- **Stockade dp (ADBC)**: the query sent to a running gateway (``stockade serve`` in
  its own process, :mod:`bench.dp_gateway`) through ADBC, ``execute`` +
  ``fetch_arrow_table`` as the dp analyst: plan, price, type-check, the durable
  charge, the aggregate over the table's bounded snapshot, noise and release, the
  stored answer, the four Flight calls ADBC makes;
- **Stockade raw (ADBC)**: the same SQL to the same gateway as a user with ``raw``
  access (the gateway's fixed cost without dp);
- **SmartNoise alone**: ``snsql.PrivateReader`` over a DuckDB connection reading the
  file, with its default settings (per-unit sampling and the scale search in every call);
- **Stockade dp in-process**: :class:`gateway.dp.PrivateQueries` called in this
  process (no Flight), over an engine with a bounded snapshot of the file, and
  **sampled**, over an engine without one, as for a live source such as PostgreSQL
  (every query samples rows per unit);
- **Stockade dp, repeated**: the dp query just answered, asked again through ADBC:
  the stored answer, at no cost.

The contenders run in rounds of :data:`CALLS_PER_ROUND` passes, every pass with one new
constant for all of them, in an order that rotates from round to round; round 0 is a
warm-up. SmartNoise and the sampled path, which take seconds at 10M rows, run once a
round while their calls have taken less than :data:`SLOW_BUDGET_S` (twice at least).
Times are medians.
:mod:`bench.dp_profile` breaks one dp call through the gateway down by stage.
``python -m bench.dp`` prints the Markdown rows for docs/benchmarks.md and writes them
to bench/results/dp.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import duckdb
from argon2 import PasswordHasher

import connectors
from bench import dp_gateway, dp_profile
from bench.servers import THREADS
from gateway.dp import PrivateQueries
from gateway.engine import Engine
from gateway.ledger import Ledger
from gateway.snapshots import ContributionBound
from gateway.state import StateStore
from policy.loader import parse_policy
from policy.principal import Principal

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
QUERY = "SELECT grp, COUNT(*) AS n, AVG(x) AS ax FROM t WHERE x > <c> GROUP BY grp"
EPSILON = 0.5
DELTA = 1e-6
#: Calls of every fast contender per round (each with its own WHERE constant).
CALLS_PER_ROUND = 3
#: Timed seconds after which a slow contender is not called again (after 2 calls at least).
SLOW_BUDGET_S = 20.0


#: The values of ``x`` in the data sets: ``discrete`` (the default, as in every earlier
#: run) takes 100 values, ``(i * 7) % 100``, which Parquet stores as a dictionary and
#: filters per dictionary entry; ``continuous`` takes 10⁶ values, ``hash(7i) mod 10⁶ / 10⁴``.
VALUES = {"discrete": "((i * 7) % 100)::DOUBLE",
          "continuous": "(hash(i * 7) % 1000000)::DOUBLE / 10000"}


def make_data(rows: int, values: str = "discrete") -> Path:
    """The data set of ``rows`` rows (generated once): 2 rows per ``pid``, 10 ``grp``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"dp-{rows}.parquet" if values == "discrete"
                      else f"dp-{rows}-{values}.parquet")
    if not path.exists():
        partial = path.with_suffix(".partial")
        con = duckdb.connect()
        con.execute(f"""
            COPY (SELECT i // 2 AS pid, (hash(i) % 10)::INTEGER AS grp,
                         {VALUES[values]} AS x
                  FROM range({rows}) r(i)) TO '{partial}' (FORMAT parquet)""")
        con.close()
        partial.rename(path)
    return path


def query_for(i: int) -> str:
    """The benchmark's query with the ``i``-th WHERE constant (never the same twice).

    >>> query_for(3)
    'SELECT grp, COUNT(*) AS n, AVG(x) AS ax FROM t WHERE x > 3.000003 GROUP BY grp'
    """
    return QUERY.replace("<c>", f"{i % 10}.{i:06d}")


def smartnoise_alone(path: Path) -> Callable[[str], Any]:
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

    def run(sql: str) -> Any:
        reader = PrivateReader(PlainReader(), metadata,
                               privacy=Privacy(epsilon=EPSILON, delta=DELTA))
        return reader.execute(sql.replace("FROM t", "FROM bench.t"))

    return run


class _Rounds:
    """Contenders called in rounds; every call of a round uses one new WHERE constant.

    A round is :data:`CALLS_PER_ROUND` passes over the contenders, in an order that
    rotates from round to round; a *slow* contender (SmartNoise, per-query sampling)
    is called in the first pass of a round only, and only while its timed calls have
    taken less than :data:`SLOW_BUDGET_S` in all, at least twice. Round 0 is a warm-up.
    Times in milliseconds.
    """

    def __init__(self) -> None:
        self.contenders: list[tuple[str, Callable[[str], Any], bool]] = []
        self.times: dict[str, list[float]] = {}

    def add(self, name: str, fn: Callable[[str], Any], *, slow: bool = False) -> None:
        self.contenders.append((name, fn, slow))
        self.times[name] = []

    def run(self, repeats: int, first: int) -> None:
        for r in range(repeats + 1):
            k = r % len(self.contenders)
            for j in range(CALLS_PER_ROUND):
                sql = query_for(first + r * CALLS_PER_ROUND + j)
                for name, fn, slow in self.contenders[k:] + self.contenders[:k]:
                    done = self.times[name]
                    if slow and (j > 0 or (len(done) >= 2
                                           and sum(done) >= SLOW_BUDGET_S * 1000)):
                        continue
                    started = time.perf_counter()
                    fn(sql)
                    if r > 0:
                        self.times[name].append((time.perf_counter() - started) * 1000)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(t) for name, t in self.times.items() if t}


def measure(rows: int, repeats: int, profile_calls: int = 15,
            values: str = "discrete") -> dict[str, Any]:
    """Every contender on ``rows`` rows, interleaved (see the module doc), and the
    stage profile of ``profile_calls`` dp calls (:mod:`bench.dp_profile`)."""
    path = make_data(rows, values)
    with tempfile.TemporaryDirectory() as tmp:
        result = _contenders(path, Path(tmp), rows, repeats)
        result["values"] = values
        if profile_calls:
            result["profile"] = dp_profile.profile(path, Path(tmp) / "profile", profile_calls)
    return result


def _contenders(path: Path, tmp: Path, rows: int, repeats: int) -> dict[str, Any]:
    with ExitStack() as stack:
        policy = parse_policy(dp_gateway.policy_text(path), base_dir=str(path.parent))
        table = policy.datasets["bench"].tables["t"]
        assert table.privacy_unit is not None and table.max_rows_per_unit is not None
        bound = ContributionBound(table.privacy_unit, table.max_rows_per_unit)
        plan = connectors.get("parquet").plan(
            {"format": "parquet", "path": str(path)}, base_dir=path.parent, alias="src_t")
        engine = Engine(tmp / "engine")
        engine.add_table("bench", "t", plan, bound=bound)  # keeps a bounded snapshot
        engine.start()
        stack.callback(engine.close)
        unbounded = Engine(tmp / "unbounded")
        unbounded.add_table("bench", "t", plan)  # no snapshot: every query samples
        unbounded.start()
        stack.callback(unbounded.close)
        store = StateStore(tmp / "state", hasher=PasswordHasher(memory_cost=8192))
        stack.callback(store.close)
        ledger = Ledger(store)
        schemas = {("bench", "t"): engine.columns("bench", "t")}
        fast = PrivateQueries(engine, ledger)
        sampled = PrivateQueries(unbounded, ledger)

        def stockade(service: PrivateQueries, user: str) -> Callable[[str], Any]:
            principal = Principal(user, "analyst")  # a user each: answers are per user

            def run(sql: str) -> Any:
                planned = service.plan(sql.replace("FROM t", "FROM bench.t"), policy=policy,
                                       principal=principal, schemas=schemas, delta=DELTA)
                return service.execute(planned)
            return run

        plain_con = duckdb.connect()
        stack.callback(plain_con.close)
        plain_con.execute(f"SET threads = {THREADS}")
        plain_con.execute(f"CREATE VIEW t AS SELECT * FROM '{path}'")

        def plain(sql: str) -> Any:
            cur = plain_con.cursor()
            try:
                return cur.sql(sql).to_arrow_table()
            finally:
                cur.close()

        server = dp_gateway.start(stack, tmp / "gateway", path)
        clients = dp_gateway.GatewayClients.connect(server.url)
        stack.callback(clients.close)
        served = ""

        def dp_adbc(sql: str) -> Any:
            nonlocal served
            served = sql.replace("FROM t", "FROM bench.t")
            return clients.call(clients.dp, served)

        def dp_adbc_again(sql: str) -> Any:  # the dp query just asked: its stored answer
            return clients.call(clients.dp, served)

        def raw_adbc(sql: str) -> Any:
            return clients.call(clients.raw, sql.replace("FROM t", "FROM bench.t"))

        rounds = _Rounds()
        rounds.add("plain", plain)
        rounds.add("dp_adbc", dp_adbc)
        rounds.add("raw_adbc", raw_adbc)
        rounds.add("stockade", stockade(fast, "snapshot-user"))
        rounds.add("smartnoise", smartnoise_alone(path), slow=True)
        rounds.add("stockade_sampled", stockade(sampled, "sampling-user"), slow=True)
        rounds.run(repeats, first=rows // 1000)
        # The stored-answer repeat right after its query, so that nothing runs between.
        again = _Rounds()
        again.add("dp_adbc", dp_adbc)
        again.add("dp_adbc_again", dp_adbc_again)
        again.run(repeats, first=rows // 1000 + (repeats + 1) * CALLS_PER_ROUND)
        result: dict[str, Any] = {"rows": float(rows), **rounds.medians(),
                                  "dp_adbc_again": again.medians()["dp_adbc_again"]}
        result["times"] = rounds.times
        return result


def _label(r: dict[str, Any]) -> str:
    """The row label of a result: its rows, and ``continuous x`` if so."""
    values = r.get("values", "discrete")
    return f"{int(r['rows']):,}" + ("" if values == "discrete" else f", {values} x")


def table(results: list[dict[str, Any]]) -> str:
    """The table of the dp section (``python -m bench.dp`` prints it)."""
    lines = [
        "| rows | plain DuckDB | Stockade dp (ADBC) | SmartNoise alone | dp / plain "
        "| SmartNoise / dp | Stockade raw (ADBC) | raw / plain | dp in-process "
        "| dp in-process, sampled | dp repeated (stored answer) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        plain, dp = r["plain"], r["dp_adbc"]
        lines.append(
            f"| {_label(r)} | {plain:.1f} ms | {dp:.1f} ms | {r['smartnoise']:,.0f} ms "
            f"| **{dp / plain:.2f}×** | **{r['smartnoise'] / dp:.1f}×** "
            f"| {r['raw_adbc']:.1f} ms | {r['raw_adbc'] / plain:.2f}× | {r['stockade']:.1f} ms "
            f"| {r['stockade_sampled']:,.0f} ms | {r['dp_adbc_again']:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


def markdown(result: dict[str, Any]) -> str:
    """The dp section of docs/benchmarks.md."""
    slow = min(len(r["times"]["smartnoise"]) for r in result["results"])
    profiles = "".join(
        f"\n**{_label(r)} rows**, medians of {r['profile']['calls']} calls:\n\n"
        + dp_profile.table(r["profile"]) for r in result["results"] if r.get("profile"))
    return f"""## Differential privacy (`dp` mode)

The analyst's view: a `dp` query sent through ADBC (`execute` + `fetch_arrow_table`) to a
running gateway (`stockade serve` in its own process, on loopback), against the same
aggregate in plain DuckDB in-process on the same Parquet file and against SmartNoise SQL
driven directly on the same data (`snsql.PrivateReader` over its own DuckDB connection,
default settings), side by side in one run (`bench/dp.py`). The query, over 10 groups,
with 2 rows per privacy unit, ε = {EPSILON} per mechanism and δ = {DELTA:g}, with a new
WHERE constant `c` in every call, so that no plan, schema or paid answer is reused:

```sql
{QUERY.replace("<c>", "c")}
```

Contenders alternate in rounds of {CALLS_PER_ROUND} passes (one constant per pass for all, the order
rotating from round to round); medians of {result['repeats']} rounds after one warm-up, so
{result['repeats'] * CALLS_PER_ROUND} calls of each contender (SmartNoise and the sampled path: one call a round while
their calls have taken less than {SLOW_BUDGET_S:.0f} s in all; {slow} calls at least here).

![dp](benchmarks-dp.png)

{table(result['results'])}
Goals: dp / plain ≤ 2×, SmartNoise / dp ≥ 10×. *Stockade raw* is the same SQL through the
same gateway for a user with `raw` access: the gateway's fixed cost without dp. *dp
in-process* calls `gateway.dp.PrivateQueries` in the benchmark's process (no Flight) over
the table's bounded snapshot (at most `max_rows_per_unit` rows per unit, drawn once per
content version); *sampled* is the same on an engine without a snapshot, which samples
per unit in every query, as for a live source. *dp repeated* asks the query just answered
again: its stored answer, free.

### Where a dp call's time goes

One gateway in the benchmark's process, the same query with a new constant per call
through ADBC, every stage timed by wrapping the function that does it
(`bench/dp_profile.py`); nested stages are indented under the call that runs them.
*ADBC and gRPC* is the time at the client less the three calls' time at the server
(serialisation, loopback, the driver and its ClosePreparedStatement).
{profiles}
{CUTS}"""  # noqa: E501


#: What the fixed cost of a dp call was cut by (a one-time measurement, kept as text).
CUTS = """### What was cut, and what is left (2026-12)

The same profile (1M rows, 20 calls a run) of the gateway before the cuts (main at
e7d6e55) and after, in alternating runs on the same machine (load average 10–15),
medians of three runs, in ms:

| stage | before | after | what changed |
|---|---:|---:|---|
| ADBC execute + fetch (client) | 110.2 | 65.9 | |
| CreatePreparedStatement | 12.3 | 6.5 | |
| type-check: release over no rows | 3.05 | 0 | cached per query shape, not per WHERE; the aggregate is still bound for every query |
| release | 25.7 | 10.9 | |
| noise | 3.1 | 2.1 | drawn on the calling thread below 512 values (a helper thread cost 8–10 ms against 2 for 40 values) |
| outputs, HAVING, ORDER BY | 8.3 | 0.2 | the common shape in numpy, DuckDB's types checked once per shape |
| bootstrap intervals | 12.0 | 3.4 | a ratio (AVG) in numpy from the same draws; only the measurements read are simulated |
| store the answer | 3.0 | 0.2 | committed without waiting for the disk; the next charge's synced commit carries it |
| read | 26.3 | 25.7 | (the relation over the snapshot from a template, no parse: −0.7 ms) |

Left, per call: the read, the four Flight calls ADBC makes (`SELECT 1` through a bare
Flight server takes about 4 ms, see the latency section), planning (parse, policy rules,
translation: ~3 ms), the bind of the aggregate query (~1.5 ms), OpenDP's noise (~40 µs a
value), the bootstrap, and the charge's synced commit.

**The read depends on the data.** The aggregate reads the table's bounded snapshot, a
DuckDB file; plain DuckDB reads the Parquet file. On the default data `x` takes 100 values,
which Parquet stores as a dictionary and filters per entry, and the snapshot's scan is
slower; with continuous values it is faster. The plain aggregate and the dp aggregate SQL
on each, 10M rows, 20 alternating runs in one process, 10th percentile (load ~5):

| x | plain on Parquet | plain on snapshot | dp SQL on Parquet | dp SQL on snapshot |
|---|---:|---:|---:|---:|
| 100 values (default) | 118 ms | 164 ms | 99 ms | 171 ms |
| continuous | 156 ms | 83 ms | 186 ms | 107 ms |

`python -m bench --only dp --dp-values discrete,continuous` measures both. Writing the
snapshot uncompressed made its scan faster on both (by ~25 % on the default data), at
7× its size on disk and in memory; not done.
"""  # noqa: E501


def headlines(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    out = []
    for r in result["results"]:
        rows = f"{int(r['rows']) / 1e6:g}M rows"
        if r.get("values", "discrete") != "discrete":
            rows += f", {r['values']} x"
        out.append((f"dp (ADBC): Stockade dp / plain DuckDB, {rows}",
                    r["dp_adbc"] / r["plain"], "≤ 2"))
        out.append((f"dp (ADBC): SmartNoise alone / Stockade dp, {rows}",
                    r["smartnoise"] / r["dp_adbc"], "≥ 10"))
        out.append((f"dp (ADBC): Stockade raw / plain DuckDB, {rows}",
                    r["raw_adbc"] / r["plain"], ""))
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = result["results"]
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    labels = [f"{_label(r)} rows" for r in results]
    series = (("plain DuckDB", [r["plain"] for r in results], "#999999"),
              ("Stockade raw (ADBC)", [r["raw_adbc"] for r in results], "#8fb8d0"),
              ("Stockade dp (ADBC)", [r["dp_adbc"] for r in results], "#2a6f97"),
              ("SmartNoise alone", [r["smartnoise"] for r in results], "#c0392b"))
    width = 0.2
    for k, (name, values, color) in enumerate(series):
        xs = [i + (k - 1.5) * width for i in range(len(results))]
        bars = ax.bar(xs, values, width, label=name, color=color)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.1f}" for v in values],
                     fontsize=7)
    ax.set_xticks(range(len(results)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms, median (log scale)")
    ax.set_title("dp GROUP BY, 10 groups, a new WHERE each call (lower is better)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def values_list(text: str) -> list[str]:
    """``--values``: kinds of values of x, comma-separated (see :data:`VALUES`)."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in VALUES]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) of values {', '.join(unknown)}; the kinds are {', '.join(VALUES)}")
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-calls", type=int, default=15)
    parser.add_argument("--values", type=values_list, default=["discrete"])
    args = parser.parse_args(argv)
    results = [measure(rows, args.repeats, args.profile_calls, values)
               for values in args.values for rows in args.rows]
    text = table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dp.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
