"""Concurrent analysts: throughput, latency and errors at 1, 4 and 16 analysts.

Each analyst is a thread of this process with its own ADBC connection (and, on the
gateway, its own user, ``analyst0`` …). For ``duration`` seconds every analyst runs
the mix in :data:`MIX` in turn, starting at a different place in it, and never
stops to think: the offered load is as high as the analysts can make it. Every
query text is new (a varying key or ``HAVING`` bound), so nothing is answered
from a cache of plans or of paid dp answers.

The baseline is the bare Flight server of :mod:`bench.servers` at the same
concurrency with the same SQL, where the dp aggregate is a plain aggregate (the
bare server knows no privacy). Each level runs in two halves per server, ordered
gateway, bare, bare, gateway. Queries started before a half's deadline finish;
throughput is the queries finished over the time from start to the last finish.
Any failed query is an error: the run reports them and ``python -m bench`` fails.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import PeakRss, Server, Servers
from bench.stats import adbc_connect, summary_ms

LEVELS = (1, 4, 16)

MIX: tuple[tuple[str, str, Callable[[int], str]], ...] = (
    ("raw aggregate", "`SELECT l_returnflag, l_linestatus, COUNT(*), SUM(l_quantity), "
                      "AVG(l_extendedprice) FROM tpch.lineitem GROUP BY 1, 2` (raw mode)",
     lambda i: ("SELECT l_returnflag, l_linestatus, COUNT(*) AS n, SUM(l_quantity) AS qty, "
                "AVG(l_extendedprice) AS price FROM tpch.lineitem "
                f"GROUP BY l_returnflag, l_linestatus HAVING COUNT(*) > -{i}")),
    ("dp aggregate", "`SELECT l_returnflag, COUNT(*), AVG(l_quantity) FROM private.lineitem "
                     "GROUP BY 1` (dp mode, ε = 0.5 a query)",
     lambda i: ("SELECT l_returnflag, COUNT(*) AS n, AVG(l_quantity) AS qty "
                f"FROM private.lineitem GROUP BY l_returnflag HAVING COUNT(*) > -{i}")),
    ("small select", "`SELECT … FROM tpch.lineitem WHERE l_orderkey = k` (raw mode)",
     lambda i: ("SELECT l_orderkey, l_linenumber, l_quantity, l_shipdate FROM tpch.lineitem "
                f"WHERE l_orderkey = {1 + (i * 7919) % 6_000_000}")),
)


# Numbers for the queries' texts, never the same twice, in this run or an earlier one
# against the same state store (where a repeated dp query would get its paid answer).
_NUMBERS = itertools.count(time.time_ns() // 1000 % 10**12)


@dataclass
class _Session:
    """What one stretch of ``duration`` seconds at one server gave."""

    seconds: float
    peak_rss: int
    samples: list[tuple[str, float]] = field(default_factory=list)  # (kind, seconds)
    errors: list[str] = field(default_factory=list)


def _session(server: Server, logins: Sequence[tuple[str, str] | None],
             duration: float) -> _Session:
    connections = [adbc_connect(server.url, *login) if login else adbc_connect(server.url)
                   for login in logins]
    memory = PeakRss(server.pid)
    samples: list[tuple[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    clock = {"began": 0.0, "deadline": 0.0}

    def go() -> None:  # run once by the barrier when every analyst is warm
        memory.reset()
        clock["began"] = time.perf_counter()
        clock["deadline"] = clock["began"] + duration

    start = threading.Barrier(len(logins) + 1, action=go)

    def analyst(index: int) -> None:
        cur = connections[index].cursor()
        mine: list[tuple[str, float]] = []
        try:
            for _, _, sql_for in MIX:  # warm-up: the user's first dp query, the driver
                cur.execute(sql_for(next(_NUMBERS)))
                cur.fetch_arrow_table()
        except Exception as exc:  # noqa: BLE001 - counted like the others
            with lock:
                errors.append(f"warm-up: {type(exc).__name__}: {exc}")
        start.wait()
        i = index
        while time.perf_counter() < clock["deadline"]:
            kind, _, sql_for = MIX[i % len(MIX)]
            sql = sql_for(next(_NUMBERS))
            began = time.perf_counter()
            try:
                cur.execute(sql)
                cur.fetch_arrow_table()
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with lock:
                    errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            else:
                mine.append((kind, time.perf_counter() - began))
            i += 1
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=analyst, args=(k,)) for k in range(len(logins))]
    try:
        for thread in threads:
            thread.start()
        start.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - clock["began"]
        peak = memory.peak()
    finally:
        for conn in connections:
            conn.close()
    return _Session(elapsed, peak, samples, errors)


def _figures(count: int, sessions: Sequence[_Session], duration: float) -> dict[str, Any]:
    samples = [s for session in sessions for s in session.samples]
    errors = [e for session in sessions for e in session.errors]
    seconds = sum(session.seconds for session in sessions)
    if not samples:
        errors.append(f"no query finished in {duration:g} s")
    result: dict[str, Any] = {
        "analysts": count, "seconds": seconds, "queries": len(samples),
        "qps": len(samples) / seconds, "errors": len(errors), "error_samples": errors[:5],
        "peak_rss": max(session.peak_rss for session in sessions),
        "all": summary_ms([s for _, s in samples]) if samples else None, "kinds": {}}
    for kind, _, _ in MIX:
        mine = [s for k, s in samples if k == kind]
        result["kinds"][kind] = summary_ms(mine) if mine else None
    return result


def measure(servers: Servers, levels: Sequence[int] = LEVELS,
            duration: float = 10.0) -> dict[str, Any]:
    """``duration`` seconds per level and server, in two halves ordered gateway, bare,
    bare, gateway, so that a change in the machine's load weighs on both alike."""
    if max(levels) > len(servers.analysts):
        raise ValueError(f"{max(levels)} analysts need as many users; the servers have "
                         f"{len(servers.analysts)}")
    result: dict[str, Any] = {"duration": duration, "mix": [[k, d] for k, d, _ in MIX],
                              "levels": []}
    for count in levels:
        logins: list[tuple[str, str] | None] = list(servers.analysts[:count])
        nobody: list[tuple[str, str] | None] = [None] * count
        contenders = {"gateway": (servers.gateway, logins), "bare": (servers.bare, nobody)}
        sessions: dict[str, list[_Session]] = {"gateway": [], "bare": []}
        for name in ("gateway", "bare", "bare", "gateway"):
            server, accounts = contenders[name]
            sessions[name].append(_session(server, accounts, duration / 2))
        point: dict[str, Any] = {"analysts": count}
        for name in contenders:
            point[name] = p = _figures(count, sessions[name], duration)
            print(f"  concurrency {count} on {name}: {p['qps']:.1f} q/s, p50 "
                  f"{p['all']['p50'] if p['all'] else float('nan'):.1f} ms, p99 "
                  f"{p['all']['p99'] if p['all'] else float('nan'):.1f} ms, "
                  f"{p['errors']} error(s)", flush=True)
        result["levels"].append(point)
    return result


def errors(result: dict[str, Any]) -> list[str]:
    """Every failure of the run, as ``SERVER, N analysts: message`` lines."""
    out = []
    for point in result["levels"]:
        for name in ("gateway", "bare"):
            p = point[name]
            if p["errors"]:
                out.append(f"{name}, {point['analysts']} analyst(s): {p['errors']} failed "
                           f"queries, e.g. " + " | ".join(p["error_samples"]))
    return out


def ratios(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    first = result["levels"][0]
    for point in result["levels"]:
        n = point["analysts"]
        g, b = point["gateway"], point["bare"]
        out[f"qps_vs_bare_{n}"] = g["qps"] / b["qps"]
        out[f"p99_vs_bare_{n}"] = g["all"]["p99"] / b["all"]["p99"]
        out[f"qps_scaling_{n}"] = g["qps"] / first["gateway"]["qps"]
    return out


def markdown(result: dict[str, Any]) -> str:
    rows, kinds = [], []
    for point in result["levels"]:
        g, b = point["gateway"], point["bare"]
        rows.append(
            f"| {point['analysts']} | {g['qps']:.1f} | {b['qps']:.1f} | {g['qps'] / b['qps']:.2f} "
            f"| {g['all']['p50']:.1f} ms | {g['all']['p99']:.1f} ms | {b['all']['p50']:.1f} ms "
            f"| {b['all']['p99']:.1f} ms | {g['all']['p99'] / b['all']['p99']:.2f}× "
            f"| {g['errors']} / {b['errors']} | {g['peak_rss'] / 1e6:,.0f} MB |")
        for kind, _, _ in MIX:
            gk, bk = g["kinds"][kind], b["kinds"][kind]
            if gk and bk:
                kinds.append(f"| {point['analysts']} | {kind} | {gk['n']} | {gk['p50']:.1f} ms "
                             f"| {gk['p99']:.1f} ms | {bk['n']} | {bk['p50']:.1f} ms "
                             f"| {bk['p99']:.1f} ms |")
    mix = "\n".join(f"- **{kind}**: {description}" for kind, description in result["mix"])
    levels = ", ".join(str(p["analysts"]) for p in result["levels"])
    total = sum(p["gateway"]["errors"] + p["bare"]["errors"] for p in result["levels"])
    return f"""## Concurrency

{levels} concurrent analysts, each a thread of the benchmark's process with its own ADBC
connection and its own user, each running this mix once to warm up and then in turn
for {result['duration']:g} s without pause (starting at different places in it; every
query text is new, so no plan or dp answer is reused), against the gateway and against
the bare Flight server (2 DuckDB threads each), in two halves each, ordered gateway,
bare, bare, gateway (`bench/concurrency.py`):

{mix}

On the bare server the dp aggregate runs as the plain aggregate. Throughput is queries
finished per second; latencies are over all the queries of the mix. Errors:
{total} in all (the run fails on any). Peak RSS is the gateway's during the level.

![concurrency](benchmarks-concurrency.png)

| analysts | Stockade q/s | bare q/s | ratio | Stockade p50 | Stockade p99 | bare p50 | bare p99 | p99 ratio | errors (Stockade / bare) | Stockade peak RSS |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|
{chr(10).join(rows)}

Per query of the mix:

| analysts | query | Stockade n | Stockade p50 | Stockade p99 | bare n | bare p50 | bare p99 |
|---:|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(kinds)}
"""  # noqa: E501


def headlines(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    r = ratios(result)
    counts = [p["analysts"] for p in result["levels"]]
    out = [(f"concurrency: Stockade / bare q/s, {n} analyst(s)", r[f"qps_vs_bare_{n}"], "")
           for n in counts]
    out.append((f"concurrency: Stockade / bare p99, {counts[-1]} analysts",
                r[f"p99_vs_bare_{counts[-1]}"], ""))
    out.append((f"concurrency: Stockade q/s at {counts[-1]} / at {counts[0]} analyst(s)",
                r[f"qps_scaling_{counts[-1]}"], ""))
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [str(p["analysts"]) for p in result["levels"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, label, color in (("gateway", "Stockade", "#2a6f97"),
                               ("bare", "bare Flight", "#999999")):
        left.plot(counts, [p[name]["qps"] for p in result["levels"]], marker="o", color=color,
                  label=label)
        right.plot(counts, [p[name]["all"]["p99"] for p in result["levels"]], marker="o",
                   color=color, label=f"{label} p99")
        right.plot(counts, [p[name]["all"]["p50"] for p in result["levels"]], marker=".",
                   linestyle="--", color=color, label=f"{label} p50")
    left.set_xlabel("concurrent analysts")
    left.set_ylabel("queries / s")
    left.set_ylim(bottom=0)
    left.set_title("Throughput of the mix (higher is better)", fontsize=9)
    left.legend(fontsize=8)
    right.set_xlabel("concurrent analysts")
    right.set_ylabel("ms")
    right.set_yscale("log")
    right.set_title("Latency over the mix (lower is better)", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
