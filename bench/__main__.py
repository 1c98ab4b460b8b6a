"""`make bench`: the gateway side by side with a bare pyarrow Flight server.

Both servers run as separate processes on loopback and stream the same DuckDB
reader over the same Parquet file; the client is pyarrow's Flight client in this
process. Figures are reported as ratios (gateway / baseline) and written to
docs/benchmarks.md with a plot. Then the policy overhead (`bench/policy_overhead.py`):
planning a simple and a complex query against DuckDB running the plan, on the demo data;
dp against SmartNoise (`bench/dp.py`); and federated queries through a network node over
1, 2, 4 and 8 domains (`bench/federation.py`). ``--only federation`` runs the last one
alone and rewrites only its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2

from bench import dp as dp_bench
from bench import federation, policy_overhead
from gateway.flightsql import flight_sql_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
BATCH_ROWS = 65_536

POLICY = """\
version: 1
domain: {name: bench, description: benchmark domain}
limits: {max_rows: 1000000000, timeout_s: 600}
datasets:
  tpch:
    tables:
      lineitem:
        source: {format: parquet, path: lineitem.parquet}
roles:
  reader:
    datasets:
      tpch: {mode: raw}
  owner: {admin: true}
"""


def make_data(scale: float) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"lineitem-sf{scale:g}.parquet"
    if not path.exists():
        from duckdb_extensions import import_extension

        print(f"generating TPC-H lineitem at scale factor {scale:g} ...", flush=True)
        con = duckdb.connect()
        import_extension("tpch", con=con)
        con.execute("LOAD tpch")
        con.execute(f"CALL dbgen(sf={scale})")
        con.execute(f"COPY lineitem TO '{path}' (FORMAT parquet)")
        con.close()
    return path


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on (grpc://\S+)", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError(f"server did not start: {cmd}")


def command(message) -> bytes:  # type: ignore[no-untyped-def]
    wrapped = any_pb2.Any()
    wrapped.Pack(message, type_url_prefix="type.googleapis.com/")
    return wrapped.SerializeToString()


def gateway_query(client: flight.FlightClient, options: flight.FlightCallOptions,
                  sql: str) -> flight.FlightStreamReader:
    descriptor = flight.FlightDescriptor.for_command(command(pb.CommandStatementQuery(query=sql)))
    info = client.get_flight_info(descriptor, options)
    return client.do_get(info.endpoints[0].ticket, options)


def bare_query(client: flight.FlightClient, options: flight.FlightCallOptions,
               sql: str) -> flight.FlightStreamReader:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql.encode()), options)
    return client.do_get(info.endpoints[0].ticket, options)


def drain(reader: flight.FlightStreamReader) -> tuple[int, int]:
    rows = nbytes = 0
    for chunk in reader:
        rows += chunk.data.num_rows
        nbytes += chunk.data.nbytes
    return rows, nbytes


def throughput(run: Callable[[], flight.FlightStreamReader], repeats: int) -> tuple[float, int]:
    best = 0.0
    nbytes = 0
    for _ in range(repeats):
        started = time.perf_counter()
        _, nbytes = drain(run())
        best = max(best, nbytes / (time.perf_counter() - started))
    return best, nbytes


def latency(run: Callable[[], flight.FlightStreamReader], n: int) -> list[float]:
    for _ in range(20):
        drain(run())
    out = []
    for _ in range(n):
        started = time.perf_counter()
        drain(run())
        out.append(time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--scale", type=float, default=1.0, help="TPC-H scale factor")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--demo-rows", type=int, default=1_000_000,
                        help="demo screenings for the policy overhead")
    parser.add_argument("--dp-rows", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="rows of the dp benchmark's data sets")
    parser.add_argument("--dp-repeats", type=int, default=5)
    parser.add_argument("--overhead-n", type=int, default=30,
                        help="timed runs per query for the policy overhead")
    parser.add_argument("--federation-rows", type=int, default=200_000,
                        help="screenings per domain of the federation benchmark")
    parser.add_argument("--federation-n", type=int, default=50,
                        help="timed runs per figure of the federation benchmark")
    parser.add_argument("--federation-warmup", type=int, default=10)
    parser.add_argument("--only", choices=("federation",),
                        help="run only this part and rewrite only its section of "
                             "docs/benchmarks.md")
    args = parser.parse_args(argv)

    if args.only == "federation":
        fed = run_federation(args)
        path = DOCS / "benchmarks.md"
        document = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(federation.splice(document, federation.markdown(fed)))
        print(federation.markdown(fed))
        return 0

    data = make_data(args.scale)
    work = RESULTS / "domain"
    work.mkdir(parents=True, exist_ok=True)
    (work / "lineitem.parquet").unlink(missing_ok=True)
    (work / "lineitem.parquet").symlink_to(data)
    (work / "policy.yaml").write_text(POLICY)
    env = dict(os.environ, STOCKADE_ADMIN_PASSWORD="bench-owner-pw",
               PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "gateway.cli", "users", "remove", "bench",
                    "--data-dir", str(work / "state")], env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "gateway.cli", "users", "add", "bench", "--role",
                    "reader", "--password-stdin", "--data-dir", str(work / "state")],
                   input="bench-password\n", text=True, env=env, check=True)
    gw_proc, gw_url = start([sys.executable, "-m", "gateway.cli", "serve", "--policy",
                             str(work / "policy.yaml"), "--data-dir", str(work / "state"),
                             "--port", "0"], env)
    bare_proc, bare_url = start([sys.executable, "-m", "bench.bare_server", str(BATCH_ROWS)], env)
    try:
        gw = flight.connect(gw_url)
        pair = gw.authenticate_basic_token(b"bench", b"bench-password")
        gw_options = flight.FlightCallOptions(headers=[pair])
        bare = flight.connect(bare_url)
        bare_options = flight.FlightCallOptions()

        big_gw = "SELECT * FROM tpch.lineitem"
        big_bare = f"SELECT * FROM read_parquet('{data}')"
        results: dict[str, float] = {}
        # Alternate the two so that neither gets a warmer machine.
        gw_tp = bare_tp = 0.0
        nbytes = 0
        for _ in range(args.repeats):
            tp, nbytes = throughput(lambda: gateway_query(gw, gw_options, big_gw), 1)
            gw_tp = max(gw_tp, tp)
            tp, _ = throughput(lambda: bare_query(bare, bare_options, big_bare), 1)
            bare_tp = max(bare_tp, tp)
        results["throughput_gateway_mb_s"] = gw_tp / 1e6
        results["throughput_bare_mb_s"] = bare_tp / 1e6
        results["throughput_ratio"] = gw_tp / bare_tp
        results["result_mb"] = nbytes / 1e6

        gw_lat = latency(lambda: gateway_query(gw, gw_options, "SELECT 1"), args.latency_n)
        bare_lat = latency(lambda: bare_query(bare, bare_options, "SELECT 1"), args.latency_n)
        results["select1_gateway_ms"] = statistics.median(gw_lat) * 1e3
        results["select1_bare_ms"] = statistics.median(bare_lat) * 1e3
        results["select1_ratio"] = statistics.median(gw_lat) / statistics.median(bare_lat)
        results["select1_gateway_p95_ms"] = sorted(gw_lat)[int(0.95 * len(gw_lat))] * 1e3
        results["select1_bare_p95_ms"] = sorted(bare_lat)[int(0.95 * len(bare_lat))] * 1e3
    finally:
        for proc in (gw_proc, bare_proc):
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
            proc.wait(timeout=30)
    overhead = policy_overhead.measure(args.demo_rows, args.overhead_n)
    dp_results = [dp_bench.measure(rows, args.dp_repeats) for rows in args.dp_rows]
    fed = run_federation(args)
    report(results, args.scale, overhead, args.demo_rows, dp_bench.markdown(dp_results),
           federation.markdown(fed))
    return 0


def run_federation(args: argparse.Namespace) -> federation.Federation:
    print("federation: a network over 1, 2, 4 and 8 domains ...", flush=True)
    fed = federation.measure(args.federation_rows, args.federation_n, args.federation_warmup)
    DOCS.mkdir(exist_ok=True)
    federation.plot(fed, DOCS / "benchmarks-federation.png")
    return fed


def plot_overhead(overhead: list[policy_overhead.Overhead]) -> None:
    import matplotlib.pyplot as plt

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
    ax.set_title("Policy overhead on the demo data", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "benchmarks-policy.png", dpi=110)


def report(r: dict[str, float], scale: float,
           overhead: list[policy_overhead.Overhead], demo_rows: int, dp_rows: str,
           federation_section: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].bar(["bare Flight", "Stockade"], [r["throughput_bare_mb_s"],
                                              r["throughput_gateway_mb_s"]],
                color=["#999999", "#2a6f97"])
    axes[0].set_title(f"SELECT * lineitem sf{scale:g} (MB/s, higher is better)")
    axes[1].bar(["bare Flight", "Stockade"], [r["select1_bare_ms"], r["select1_gateway_ms"]],
                color=["#999999", "#2a6f97"])
    axes[1].set_title("SELECT 1 round trip (ms, median)")
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(DOCS / "benchmarks.png", dpi=110)
    plot_overhead(overhead)

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, pyarrow {pa.__version__}, duckdb "
               f"{duckdb.__version__}")
    text = f"""# Benchmarks

Measured by `make bench` (`python -m bench`) on {machine}, {time.strftime('%Y-%m-%d')}.
Both servers run as their own processes on loopback and stream DuckDB's record batch
reader over the same Parquet file ({BATCH_ROWS:,} rows per DuckDB batch); the client is
pyarrow's Flight client. The baseline is a bare pyarrow Flight server (no auth, no
Flight SQL, no policy; `bench/bare_server.py`). The gateway does everything it does for
a real analyst: bearer-token check, parse, policy rewrite, plan, and batches capped at
4 MiB.

![benchmarks](benchmarks.png)

| figure | Stockade | bare Flight | ratio | goal |
|---|---:|---:|---:|---|
| large raw SELECT (TPC-H lineitem sf{scale:g}, {r['result_mb']:,.0f} MB of Arrow) | {r['throughput_gateway_mb_s']:,.0f} MB/s | {r['throughput_bare_mb_s']:,.0f} MB/s | {r['throughput_ratio']:.2f} | ≥ 0.9 |
| SELECT 1 round trip, median | {r['select1_gateway_ms']:.2f} ms | {r['select1_bare_ms']:.2f} ms | {r['select1_ratio']:.2f}× | ≤ 1.5× |
| SELECT 1 round trip, p95 | {r['select1_gateway_p95_ms']:.2f} ms | {r['select1_bare_p95_ms']:.2f} ms | | |

Throughput is the best of the repeats for each server, run alternately; latency is
GetFlightInfo + DoGet of `SELECT 1`, after 20 warm-up calls.

## Policy overhead

The time `policy.pipeline.plan_query` takes from the analyst's SQL to the rewritten
SQL (parse, resolve tables, check functions, qualify columns, rewrite, limit; no plan
cache) against the time DuckDB takes to run that rewritten SQL to a complete Arrow
table, on the demo data (`gateway.demo.generate`, {demo_rows:,} screenings, Parquet)
under the demo policy for a researcher, on a cursor of the gateway's locked engine.
Medians of {overhead[0].n} runs each, alternately, after 3 warm-up runs, in the same run
as above ({policy_overhead.versions()}). The queries are in `bench/policy_overhead.py`.

![policy overhead](benchmarks-policy.png)

| query | plan_query, median | DuckDB execution, median | plan / execute | result rows |
|---|---:|---:|---:|---:|
{policy_overhead.markdown_rows(overhead)}

## Differential privacy (`dp` mode)

A `dp` query (COUNT and AVG over 10 groups, with censoring of rare groups) through
`gateway.dp.PrivateQueries` — policy, SmartNoise's rewrite, the query on the locked
engine, noise, and the durable budget charge — against the same plain aggregate in
DuckDB and against SmartNoise SQL driven directly on the same data (its own reader
over DuckDB, no caching), side by side in one run (`bench/dp.py`).

{dp_rows}

{federation_section}"""
    (DOCS / "benchmarks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
