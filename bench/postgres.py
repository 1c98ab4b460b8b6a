"""The postgres connector's throughput against the same data exported to Parquet.

A real PostgreSQL 15 server (started as in the tests, :mod:`tests.pg_server`)
holds a table of ``rows`` rows (integers, a double, a date and a short text); the
same rows are exported to a Parquet file. One gateway serves both, as raw tables
``pg.rows`` (``format: postgres``) and ``pq.rows`` (``format: parquet``), and a
full-table ``SELECT *`` is fetched through ADBC from each, alternately,
``repeats`` times. In-process DuckDB over the same PostgreSQL table (the postgres
scanner) and the same Parquet file is measured alongside: it separates the cost
of reading PostgreSQL from the cost of the gateway.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from bench.stats import adbc_connect
from tests.pg_server import PostgresServer

USER = "bench"
PASSWORD = "bench-postgres-pw"
PG_USER = "bench_reader"
PG_PASSWORD = "bench-pg-reader-pw"
ENV = "STOCKADE_BENCH_PG_DSN"
GOAL = ""

POLICY = """\
version: 1
domain: {name: pg_bench}
limits: {max_rows: 1000000000, timeout_s: 3600}
datasets:
  pg:
    tables:
      rows:
        source: {format: postgres, dsn: {"$env": STOCKADE_BENCH_PG_DSN}, table: public.rows}
  pq:
    tables:
      rows:
        source: {format: parquet, path: rows.parquet}
roles:
  reader:
    datasets:
      pg: {mode: raw}
      pq: {mode: raw}
  owner: {admin: true}
"""


def _load(pg: PostgresServer, rows: int) -> None:
    pg.psql(f"""
        CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}';
        CREATE TABLE public.rows AS
          SELECT i AS id, i % 1000 AS grp, (i * 0.37)::float8 AS amount,
                 DATE '2020-01-01' + (i % 1500) AS day, 'item-' || (i % 977) AS label
          FROM generate_series(1, {rows}) AS g(i);
        GRANT SELECT ON public.rows TO {PG_USER};
    """)
    pg.psql("VACUUM ANALYZE public.rows")


def _duckdb_times(dsn: str, parquet: Path, repeats: int) -> dict[str, list[float]]:
    from duckdb_extensions import import_extension

    ext_dir = tempfile.mkdtemp(prefix="stockade-bench-ext-")
    con = duckdb.connect(config={"extension_directory": ext_dir})
    try:
        import_extension("postgres_scanner", con=con)
        con.execute("LOAD postgres_scanner")
        con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
        queries = {"duckdb_postgres": "SELECT * FROM pg.public.rows",
                   "duckdb_parquet": f"SELECT * FROM read_parquet('{parquet}')"}
        times: dict[str, list[float]] = {k: [] for k in queries}
        for i in range(repeats + 1):
            for name in (list(queries) if i % 2 == 0 else list(reversed(queries))):
                started = time.perf_counter()
                con.execute(queries[name]).fetch_arrow_table()
                if i > 0:
                    times[name].append(time.perf_counter() - started)
        return times
    finally:
        con.close()
        shutil.rmtree(ext_dir, ignore_errors=True)


def measure(rows: int = 2_000_000, repeats: int = 5) -> dict[str, Any]:
    from gateway.serving import start_server
    from gateway.settings import load_settings

    pg = PostgresServer()
    root = Path(tempfile.mkdtemp(prefix="stockade-bench-pg-"))
    try:
        _load(pg, rows)
        dsn = pg.dsn(PG_USER, PG_PASSWORD)
        parquet = root / "rows.parquet"
        exporter = duckdb.connect(config={"extension_directory": str(root / "ext")})
        from duckdb_extensions import import_extension

        import_extension("postgres_scanner", con=exporter)
        exporter.execute("LOAD postgres_scanner")
        exporter.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
        exporter.execute(f"COPY (SELECT * FROM pg.public.rows) TO '{parquet}' (FORMAT parquet)")
        exporter.close()

        (root / "policy.yaml").write_text(POLICY)
        os.environ[ENV] = dsn
        settings = load_settings({"policy": str(root / "policy.yaml"),
                                  "data_dir": str(root / "state"), "port": 0,
                                  "memory_limit": "4GB"}, env={})
        server, domain, url, _ = start_server(settings)
        try:
            domain.store.add_user(USER, "reader", PASSWORD, {})
            conn = adbc_connect(url, USER, PASSWORD)
            cur = conn.cursor()
            queries = {"gateway_postgres": "SELECT * FROM pg.rows",
                       "gateway_parquet": "SELECT * FROM pq.rows"}
            times: dict[str, list[float]] = {k: [] for k in queries}
            for i in range(repeats + 1):  # the first round warms both up
                for name in (list(queries) if i % 2 == 0 else list(reversed(queries))):
                    started = time.perf_counter()
                    cur.execute(queries[name])
                    got = cur.fetch_arrow_table().num_rows
                    if got != rows:
                        raise SystemExit(f"{name} returned {got} rows, expected {rows}")
                    if i > 0:
                        times[name].append(time.perf_counter() - started)
            cur.close()
            conn.close()
        finally:
            server.shutdown()
            domain.close()
            os.environ.pop(ENV, None)
        times.update(_duckdb_times(dsn, parquet, repeats))
    finally:
        pg.close()
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"rows": rows, "repeats": repeats, "median_s": {
        name: statistics.median(values) for name, values in times.items()}}
    m = result["median_s"]
    print(f"  postgres: gateway {rows / m['gateway_postgres'] / 1e6:.2f} M rows/s over "
          f"postgres, {rows / m['gateway_parquet'] / 1e6:.2f} M rows/s over parquet "
          f"(ratio {ratio(result):.2f})", flush=True)
    return result


def ratio(result: dict[str, Any]) -> float:
    """Throughput over postgres / throughput over parquet, both through the gateway."""
    m = result["median_s"]
    return float(m["gateway_parquet"] / m["gateway_postgres"])


def _rate(result: dict[str, Any], name: str) -> float:
    return float(result["rows"] / result["median_s"][name] / 1e6)


def headlines(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    m = result["median_s"]
    return [("postgres connector: throughput / Parquet, through the gateway",
             ratio(result), GOAL),
            ("postgres connector: throughput / Parquet, in-process DuckDB",
             float(m["duckdb_parquet"] / m["duckdb_postgres"]), "")]


def markdown(result: dict[str, Any]) -> str:
    labels = (("gateway_postgres", "gateway, `format: postgres`"),
              ("gateway_parquet", "gateway, `format: parquet` (same rows)"),
              ("duckdb_postgres", "in-process DuckDB, postgres scanner"),
              ("duckdb_parquet", "in-process DuckDB, `read_parquet`"))
    rows = "\n".join(
        f"| {label} | {result['median_s'][key]:.2f} s | {_rate(result, key):.2f} M |"
        for key, label in labels)
    r = headlines(result)
    return f"""## PostgreSQL connector

A full-table `SELECT *` of {result['rows']:,} rows (id, group, amount, date, label) from a
PostgreSQL 15 server on the same machine, through the gateway and ADBC, against the
same rows exported to Parquet and served by the same gateway; in-process DuckDB over
both separates the cost of reading PostgreSQL (binary COPY through the postgres
scanner) from the gateway's. Medians of {result['repeats']} alternating fetches after
a warm-up (`bench/postgres.py`).

![postgres](benchmarks-postgres.png)

| contender | median | rows/s |
|---|---:|---:|
{rows}

Throughput over PostgreSQL / over Parquet: **{r[0][1]:.2f}×** through the gateway,
**{r[1][1]:.2f}×** in-process.
"""


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    groups = (("gateway", "gateway_postgres", "gateway_parquet"),
              ("in-process DuckDB", "duckdb_postgres", "duckdb_parquet"))
    width = 0.38
    for k, (label, color) in enumerate((("PostgreSQL", "#2a6f97"), ("Parquet", "#999999"))):
        values = [_rate(result, g[1 + k]) for g in groups]
        bars = ax.bar([x + (k - 0.5) * width for x in range(len(groups))], values, width,
                      label=label, color=color)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_ylabel("million rows/s")
    ax.set_title(f"Full-table SELECT of {result['rows']:,} rows (higher is better)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
