"""Small-query latency through ADBC: the gateway against the bare Flight server.

ADBC's Flight SQL driver (what notebooks, DBeaver's ADBC path and the Python
client use) against both servers of :mod:`bench.servers`, one connection each,
calls interleaved one by one (gateway, bare, bare, gateway, …) so that both see the
same machine. A call is ``cursor.execute`` and ``fetch_arrow_table``: ADBC
prepares the statement (an action), gets its FlightInfo and fetches it (DoGet).

Two queries: ``SELECT 1`` (the same text every time, so the gateway's plan cache
answers the planning), and a lookup of one order in lineitem with a new key every
time (parsed, checked and planned on every call).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.servers import PASSWORD, USER, Servers
from bench.stats import adbc_connect, summary_ms

QUERIES: tuple[tuple[str, str, Callable[[int], str]], ...] = (
    ("select1", "`SELECT 1`", lambda i: "SELECT 1"),
    ("lookup", "one order from lineitem, a new key each call (`SELECT l_orderkey, "
               "l_linenumber, l_quantity, l_shipdate FROM tpch.lineitem WHERE l_orderkey "
               "= k`)",
     lambda i: ("SELECT l_orderkey, l_linenumber, l_quantity, l_shipdate FROM tpch.lineitem "
                f"WHERE l_orderkey = {1 + (i * 7919) % 6_000_000}")),
)


def measure(servers: Servers, n: int = 500, warmup: int = 20) -> dict[str, Any]:
    gateway = adbc_connect(servers.gateway.url, USER, PASSWORD)
    bare = adbc_connect(servers.bare.url)
    try:
        cursors = {"gateway": gateway.cursor(), "bare": bare.cursor()}

        def call(name: str, sql: str) -> float:
            cur = cursors[name]
            started = time.perf_counter()
            cur.execute(sql)
            cur.fetch_arrow_table()
            return time.perf_counter() - started

        result: dict[str, Any] = {"n": n, "warmup": warmup, "queries": {}}
        for key, description, sql_for in QUERIES:
            seconds: dict[str, list[float]] = {"gateway": [], "bare": []}
            for i in range(-warmup, n):
                order = ("gateway", "bare") if i % 2 == 0 else ("bare", "gateway")
                for name in order:
                    elapsed = call(name, sql_for(i))
                    if i >= 0:
                        seconds[name].append(elapsed)
            result["queries"][key] = {"description": description,
                                      **{name: summary_ms(s) for name, s in seconds.items()}}
            q = result["queries"][key]
            print(f"  latency {key}: gateway p50 {q['gateway']['p50']:.2f} ms p99 "
                  f"{q['gateway']['p99']:.2f} ms, bare p50 {q['bare']['p50']:.2f} ms p99 "
                  f"{q['bare']['p99']:.2f} ms", flush=True)
        return result
    finally:
        gateway.close()
        bare.close()


def ratios(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, q in result["queries"].items():
        out[f"{key}_p50"] = q["gateway"]["p50"] / q["bare"]["p50"]
        out[f"{key}_p99"] = q["gateway"]["p99"] / q["bare"]["p99"]
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for q in result["queries"].values():
        g, b = q["gateway"], q["bare"]
        for stat in ("p50", "p95", "p99"):
            rows.append(f"| {q['description'] if stat == 'p50' else ''} | {stat} "
                        f"| {g[stat]:.2f} ms | {b[stat]:.2f} ms | {g[stat] / b[stat]:.2f}× |")
    r = ratios(result)
    return f"""## Small-query latency (ADBC)

ADBC's Flight SQL driver against the gateway and against the bare Flight server (which
answers the Flight SQL calls ADBC makes in the fewest lines that work, with no auth and
no policy), one connection each, calls interleaved one by one; a call is `execute` +
`fetch_arrow_table` (ADBC prepares the statement, gets its FlightInfo, fetches it).
{result['n']} calls per query and server after {result['warmup']} warm-up calls
(`bench/latency.py`).

![latency](benchmarks-latency.png)

| query | percentile | Stockade | bare Flight | ratio |
|---|---|---:|---:|---:|
{chr(10).join(rows)}

Ratios Stockade / bare Flight: `SELECT 1` p50 **{r['select1_p50']:.2f}×**, p99
**{r['select1_p99']:.2f}×** (goal p50 ≤ 1.5×); lookup p50 **{r['lookup_p50']:.2f}×**, p99
**{r['lookup_p99']:.2f}×**.
"""


def headlines(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    r = ratios(result)
    return [("latency (ADBC): Stockade / bare, SELECT 1, p50", r["select1_p50"], "≤ 1.5"),
            ("latency (ADBC): Stockade / bare, SELECT 1, p99", r["select1_p99"], ""),
            ("latency (ADBC): Stockade / bare, lookup, p50", r["lookup_p50"], ""),
            ("latency (ADBC): Stockade / bare, lookup, p99", r["lookup_p99"], "")]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result["queries"]), figsize=(9, 3.3))
    for ax, (key, q) in zip(axes, result["queries"].items(), strict=True):
        stats = ("p50", "p95", "p99")
        width = 0.38
        xs = range(len(stats))
        for k, (name, label, color) in enumerate((("gateway", "Stockade", "#2a6f97"),
                                                  ("bare", "bare Flight", "#999999"))):
            values = [q[name][s] for s in stats]
            bars = ax.bar([x + (k - 0.5) * width for x in xs], values, width, label=label,
                          color=color)
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7)
        ax.set_xticks(list(xs), stats)
        ax.set_ylabel("ms per call")
        ax.set_title("SELECT 1" if key == "select1" else "lookup of one order (new key each call)",
                     fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("Small-query latency through ADBC (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
