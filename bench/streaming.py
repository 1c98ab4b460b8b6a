"""Raw streaming: the gateway, the bare Flight server and in-process DuckDB side by side.

The same query (``SELECT * FROM tpch.lineitem``, the whole table) over the same
Parquet file, three ways, alternately, ``repeats`` times each:

- **Stockade**: the gateway (:mod:`bench.servers`), read with pyarrow's Flight
  client in this process (GetFlightInfo of a Flight SQL statement, DoGet);
- **bare Flight**: :mod:`bench.bare_server`, the same client;
- **in-process DuckDB**: :mod:`bench.inprocess`, DuckDB's Arrow reader consumed in
  DuckDB's own process.

Throughput is the Arrow bytes received (the sum of the batches' ``nbytes``) and
rows per second of wall time, from the request to the last batch. The memory
figure is the resident set high-water mark of the process running DuckDB (the
server, or the in-process worker) during each stream, by :class:`PeakRss`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.flight as flight
from google.protobuf import any_pb2

from bench.servers import BATCH_ROWS, PASSWORD, ROOT, THREADS, USER, PeakRss, Servers
from gateway.flightsql import flight_sql_pb2 as pb

SQL = "SELECT * FROM tpch.lineitem"
CONTENDERS = ("gateway", "bare", "inprocess")
LABELS = {"gateway": "Stockade", "bare": "bare Flight", "inprocess": "in-process DuckDB"}


def _statement(sql: str) -> bytes:
    wrapped = any_pb2.Any()
    wrapped.Pack(pb.CommandStatementQuery(query=sql), type_url_prefix="type.googleapis.com/")
    data: bytes = wrapped.SerializeToString()
    return data


def _drain(reader: flight.FlightStreamReader) -> tuple[int, int]:
    rows = nbytes = 0
    for chunk in reader:
        rows += chunk.data.num_rows
        nbytes += chunk.data.nbytes
    return rows, nbytes


def _flight_run(url: str, command: bytes,
                login: tuple[str, str] | None) -> Callable[[], dict[str, float]]:
    client = flight.connect(url)
    headers = [client.authenticate_basic_token(*(s.encode() for s in login))] if login else []
    options = flight.FlightCallOptions(headers=headers)

    def run() -> dict[str, float]:
        started = time.perf_counter()
        descriptor = flight.FlightDescriptor.for_command(command)
        info = client.get_flight_info(descriptor, options)
        rows, nbytes = _drain(client.do_get(info.endpoints[0].ticket, options))
        return {"seconds": time.perf_counter() - started, "rows": rows, "bytes": nbytes}

    return run


class InProcess:
    """The :mod:`bench.inprocess` worker."""

    def __init__(self, data: Path) -> None:
        views = [f"{name}={data.resolve()}" for name in ("tpch.lineitem",)]
        command = [sys.executable, "-m", "bench.inprocess", str(BATCH_ROWS), str(THREADS),
                   *views]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if self.stdout.readline().strip() != "ready":
            raise RuntimeError("the in-process DuckDB worker did not start")

    def run(self) -> dict[str, float]:
        self.stdin.write(SQL + "\n")
        self.stdin.flush()
        answer: dict[str, float] = json.loads(self.stdout.readline())
        return answer

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


def measure(servers: Servers, repeats: int = 5, scale: float = 1.0) -> dict[str, Any]:
    """``repeats`` streams of each contender, alternately, after one warm-up each."""
    worker = InProcess(servers.data)
    try:
        runs = {
            "gateway": (_flight_run(servers.gateway.url, _statement(SQL), (USER, PASSWORD)),
                        PeakRss(servers.gateway.pid)),
            "bare": (_flight_run(servers.bare.url, SQL.encode(), None),
                     PeakRss(servers.bare.pid)),
            "inprocess": (worker.run, PeakRss(worker.proc.pid)),
        }
        result: dict[str, Any] = {"sql": SQL, "scale": scale, "repeats": repeats,
                                  "batch_rows": BATCH_ROWS, "threads": THREADS,
                                  "memory_method": runs["gateway"][1].method, "contenders": {}}
        for name, (run, _) in runs.items():
            run()  # warm-up: file cache, DuckDB's metadata, the plan cache
            result["contenders"][name] = {"seconds": [], "peak_rss": [],
                                          "idle_rss": runs[name][1].current()}
        for i in range(repeats):
            order = CONTENDERS if i % 2 == 0 else CONTENDERS[::-1]
            for name in order:
                run, memory = runs[name]
                memory.reset()
                figures = run()
                entry = result["contenders"][name]
                entry["peak_rss"].append(memory.peak())
                entry["seconds"].append(figures["seconds"])
                entry["rows"], entry["bytes"] = int(figures["rows"]), int(figures["bytes"])
            print(f"  streaming {i + 1}/{repeats}: " + ", ".join(
                f"{n} {result['contenders'][n]['bytes'] / result['contenders'][n]['seconds'][-1] / 1e6:,.0f} MB/s"  # noqa: E501
                for n in CONTENDERS), flush=True)
        return result
    finally:
        worker.close()


def figures(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per contender: best and median MB/s and rows/s, slowest MB/s, peak RSS in MB."""
    out = {}
    for name, entry in result["contenders"].items():
        best, median, worst = (min(entry["seconds"]), statistics.median(entry["seconds"]),
                               max(entry["seconds"]))
        out[name] = {
            "mb_s": entry["bytes"] / best / 1e6, "mb_s_median": entry["bytes"] / median / 1e6,
            "mb_s_worst": entry["bytes"] / worst / 1e6,
            "rows_s": entry["rows"] / best, "rows_s_median": entry["rows"] / median,
            "peak_mb": max(entry["peak_rss"]) / 1e6, "idle_mb": entry["idle_rss"] / 1e6,
            "rows": entry["rows"], "mb": entry["bytes"] / 1e6,
        }
    return out


def ratios(result: dict[str, Any]) -> dict[str, float]:
    f = figures(result)
    return {"gateway_vs_bare": f["gateway"]["mb_s"] / f["bare"]["mb_s"],
            "gateway_vs_bare_median": f["gateway"]["mb_s_median"] / f["bare"]["mb_s_median"],
            "gateway_vs_inprocess": f["gateway"]["mb_s"] / f["inprocess"]["mb_s"],
            "memory_gateway_vs_bare": f["gateway"]["peak_mb"] / f["bare"]["peak_mb"]}


def _method(result: dict[str, Any]) -> str:
    if result["memory_method"] == "VmHWM":
        return ("read from the kernel (`VmHWM` in `/proc/PID/status`, reset before every "
                "stream through `/proc/PID/clear_refs`)")
    return f"measured by {result['memory_method']}"


def markdown(result: dict[str, Any]) -> str:
    f = figures(result)
    r = ratios(result)
    rows = []
    for name in CONTENDERS:
        x = f[name]
        rows.append(
            f"| {LABELS[name]} | {x['mb_s']:,.0f} MB/s | {x['mb_s_median']:,.0f} "
            f"({x['mb_s_worst']:,.0f}–{x['mb_s']:,.0f}) MB/s | {x['rows_s'] / 1e6:,.2f} M rows/s "
            f"| {x['peak_mb']:,.0f} MB | {x['idle_mb']:,.0f} MB "
            f"| {f['gateway']['mb_s'] / x['mb_s']:.2f} |")
    gw = f["gateway"]
    return f"""## Raw streaming

`{result['sql']}` on TPC-H lineitem at scale factor {result['scale']:g}
({gw['rows']:,} rows, {gw['mb']:,.0f} MB of Arrow), streamed whole by three contenders,
alternately, {result['repeats']} times each after one warm-up (`bench/streaming.py`), each
with {result.get('threads', 2)} DuckDB threads:

- **Stockade**: the gateway (`stockade serve`, its own process) with
  everything it does for an analyst: bearer token, parse, policy rewrite, plan, batches
  capped at 4 MiB; read by pyarrow's Flight client in the benchmark's process;
- **bare Flight**: a bare pyarrow Flight server (`bench/bare_server.py`, its own process)
  streaming DuckDB's record batch reader ({result['batch_rows']:,} rows per batch) over
  the same file, the same client;
- **in-process DuckDB**: DuckDB's Arrow reader over the same file, consumed in DuckDB's
  own process (`bench/inprocess.py`): no server, no network.

Peak memory is the resident set high-water mark of the process running DuckDB during
the stream (the server; for in-process DuckDB, that process), {_method(result)}; idle
is its resident set before the streams.

![raw streaming](benchmarks-streaming.png)

| contender | best | median (slowest–best) | rows/s (best) | peak RSS | idle RSS | Stockade ÷ contender |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Ratios (best runs): Stockade / bare Flight **{r['gateway_vs_bare']:.2f}** (goal ≥ 0.9;
{r['gateway_vs_bare_median']:.2f} between the median runs), Stockade /
in-process DuckDB **{r['gateway_vs_inprocess']:.2f}**; peak memory Stockade / bare
Flight {r['memory_gateway_vs_bare']:.2f}.
"""  # noqa: E501


def headlines(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    r = ratios(result)
    return [("streaming: Stockade / bare Flight, MB/s (best runs)", r["gateway_vs_bare"], "≥ 0.9"),
            ("streaming: Stockade / bare Flight, MB/s (median runs)",
             r["gateway_vs_bare_median"], "≥ 0.9"),
            ("streaming: Stockade / in-process DuckDB, MB/s", r["gateway_vs_inprocess"], ""),
            ("streaming: peak RSS Stockade / bare Flight", r["memory_gateway_vs_bare"], "")]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = figures(result)
    labels = [LABELS[n] for n in CONTENDERS]
    colors = ["#2a6f97", "#999999", "#e0a030"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    best = [f[n]["mb_s"] for n in CONTENDERS]
    low = [f[n]["mb_s"] - f[n]["mb_s_worst"] for n in CONTENDERS]
    bars = left.bar(labels, best, color=colors, yerr=[low, [0] * len(low)], capsize=4)
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in best], fontsize=8, label_type="center",
                   color="white")
    left.set_ylabel("MB/s (best; whisker: slowest run)")
    left.set_title(f"SELECT * lineitem sf{result['scale']:g}, {f['gateway']['mb']:,.0f} MB "
                   "(higher is better)", fontsize=9)
    peak = [f[n]["peak_mb"] for n in CONTENDERS]
    idle = [f[n]["idle_mb"] for n in CONTENDERS]
    right.bar(labels, peak, color=colors, label="peak during the stream")
    right.bar(labels, idle, color="none", edgecolor="black", hatch="//", label="idle before")
    right.set_ylabel("resident memory, MB")
    right.set_title("Peak RSS of the process running DuckDB", fontsize=9)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
