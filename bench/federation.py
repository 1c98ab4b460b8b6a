"""Federated query latency: a network over 1, 2, 4 and 8 domains against one domain alone.

Eight domain gateways (``stockade serve``, each its own process, one DuckDB
thread each) serve the same-shaped data: synthetic screenings
(:mod:`bench.screenings`, ``--federation-rows`` rows, generated once and kept
under bench/results/), each domain with its own policy and state store, the
bench user reading ``oncology`` in ``raw`` mode. A network node (``stockade
network``, its own process) is started over the first 1, 2, 4 and 8 of them in
turn. The client is ADBC's Flight SQL driver in this process.

For each domain count the figure is the latency of the federated query
:data:`QUERY` through the network (GetFlightInfo and DoGet as ADBC does them,
the network fanning out, merging and answering) against the slowest single
domain answering its part alone: each domain is asked the per-domain SQL the
network sends it (``network.federate.plan_federated(QUERY).domain_sql``) directly
over ADBC, with no other load; the baseline is the largest of their medians.
Latencies are medians and 95th percentiles of ``--federation-n`` runs after
``--federation-warmup`` warm-up runs.

Every process shares this machine's cores: with 8 domains the domains' work,
which on a real network runs on 8 machines at once, here competes for the same
cores, so the ratio at 8 domains is an upper bound of the network's own cost.

``python -m bench --only federation`` runs this part alone and rewrites
docs/benchmarks.md with its new figures.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOMAIN_COUNTS = (1, 2, 4, 8)
USER = "bench"
PASSWORD = "bench-federation-pw"
QUERY = ("SELECT test, result, COUNT(*) AS n, AVG(age) AS mean_age, "
         "VAR_SAMP(age) AS var_age, MAX(tumor_size_mm) AS max_tumor "
         "FROM federated.oncology.screenings GROUP BY test, result")
GOAL = 1.2

POLICY = """\
version: 1
domain: {{name: {name}, description: "federation benchmark domain"}}
limits: {{max_rows: 10000000, timeout_s: 600}}
datasets:
  oncology:
    description: Cancer screenings (synthetic)
    tags: [cancer, screening]
    tables:
      screenings:
        source: {{format: parquet, path: "{path}"}}
        privacy_unit: patient_id
        columns:
          patient_id: {{hidden: true}}
roles:
  reader:
    datasets:
      oncology: {{mode: raw}}
  owner: {{admin: true}}
"""


@dataclass(frozen=True)
class Point:
    """The figures at one domain count (seconds)."""

    domains: int
    federated: list[float]
    slowest_alone_p50: float
    slowest_alone_p95: float

    @property
    def p50(self) -> float:
        return statistics.median(self.federated)

    @property
    def p95(self) -> float:
        return percentile(self.federated, 0.95)

    @property
    def ratio(self) -> float:
        return self.p50 / self.slowest_alone_p50


@dataclass(frozen=True)
class Federation:
    rows: int
    n: int
    warmup: int
    domain_sql: str
    alone_p50: list[float]  # per domain, seconds
    points: list[Point]


def to_json(result: Federation) -> dict[str, Any]:
    return asdict(result)


def from_json(data: dict[str, Any]) -> Federation:
    points = [Point(**p) for p in data["points"]]
    return Federation(**{**data, "points": points})


def headlines(data: dict[str, Any]) -> list[tuple[str, float, str]]:
    result = from_json(data)
    return [(f"federation: federated / slowest domain alone, {p.domains} domain(s), p50",
             p.ratio, f"≤ {GOAL:g}" if p.domains == max(DOMAIN_COUNTS) else "")
            for p in result.points if p.domains in (1, max(DOMAIN_COUNTS))]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_data(rows: int) -> Path:
    """The screenings every domain serves (generated once per size)."""
    from bench.screenings import generate

    directory = RESULTS / f"federation-{rows}"
    path = directory / "data" / "screenings.parquet"
    if not path.exists():
        print(f"generating {rows:,} screenings for the federation benchmark ...", flush=True)
        generate(directory, rows)
    return path


def domain_sql() -> str:
    """What the network asks each domain for :data:`QUERY`."""
    from network.federate import plan_federated

    plan = plan_federated(QUERY, dialect=None)
    return str(plan.domain_sql)


def _prepare_domain(index: int, data: Path) -> Path:
    from gateway.state import StateStore

    root = RESULTS / "federation" / f"domain_{index}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(POLICY.format(name=f"domain_{index}", path=data))
    store = StateStore(root / "state")
    try:
        store.set_domain_name(f"domain_{index}")  # so the user can log in through the network
        try:
            store.get_user(USER)
            store.set_password(USER, PASSWORD)
        except LookupError:
            store.add_user(USER, "reader", PASSWORD, {})
    finally:
        store.close()
    return root


def _env() -> dict[str, str]:
    return dict(os.environ, STOCKADE_ADMIN_PASSWORD="bench-owner-pw", PYTHONPATH=str(ROOT))


def _ready(proc: subprocess.Popen[str], what: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on (grpc://\S+)", line)
        if match:
            return match.group(1)
    raise RuntimeError(f"{what} did not start (exit code {proc.wait()}); see the .log files "
                       f"under {RESULTS / 'federation'}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def domains(count: int, data: Path) -> Iterator[list[str]]:
    """``count`` domain gateways over ``data``, started in parallel: their URLs."""
    with ExitStack() as stack:
        procs = []
        for index in range(1, count + 1):
            root = _prepare_domain(index, data)
            log = stack.enter_context((root / "stderr.log").open("w"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--policy",
                 str(root / "policy.yaml"), "--data-dir", str(root / "state"), "--port", "0",
                 "--threads", "1", "--memory-limit", "1GB"],
                stdout=subprocess.PIPE, stderr=log, text=True, env=_env(), cwd=ROOT)
            stack.callback(_stop, proc)
            procs.append(proc)
        yield [_ready(proc, f"domain_{i}") for i, proc in enumerate(procs, 1)]


@contextmanager
def network(urls: Sequence[str]) -> Iterator[str]:
    """A network node over ``urls`` (domain_1 …): its URL."""
    config = RESULTS / "federation" / f"network-{len(urls)}.yaml"
    lines = ["version: 1", "network: {name: bench_net}", "domains:"]
    lines += [f'  - {{name: domain_{i}, url: "{url}", timeout_s: 60}}'
              for i, url in enumerate(urls, 1)]
    config.write_text("\n".join(lines) + "\n")
    with config.with_suffix(".log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "network", "--config",
                                 str(config), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=_env(),
                                cwd=ROOT)
        try:
            yield _ready(proc, "network")
        finally:
            _stop(proc)


def _connect(url: str) -> Any:
    import adbc_driver_flightsql.dbapi as flight_sql

    return flight_sql.connect(url, db_kwargs={"username": USER, "password": PASSWORD},
                              autocommit=True)


def timings(url: str, sql: str, n: int, warmup: int) -> list[float]:
    """Seconds per run of ``sql`` at ``url`` (execute + fetch of the whole answer)."""
    conn = _connect(url)
    try:
        cur = conn.cursor()

        def run() -> None:
            cur.execute(sql)
            cur.fetch_arrow_table()

        for _ in range(warmup):
            run()
        return [_timed(run) for _ in range(n)]
    finally:
        conn.close()


def _timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(rows: int = 200_000, n: int = 50, warmup: int = 10,
            counts: Sequence[int] = DOMAIN_COUNTS) -> Federation:
    data = make_data(rows)
    per_domain = domain_sql()
    with domains(max(counts), data) as urls:
        alone = [timings(url, per_domain, n, warmup) for url in urls]
        alone_p50 = [statistics.median(t) for t in alone]
        points = []
        for count in counts:
            with network(urls[:count]) as url:
                federated = timings(url, QUERY, n, warmup)
            slowest = max(range(count), key=lambda i: alone_p50[i])
            points.append(Point(count, federated, alone_p50[slowest],
                                percentile(alone[slowest], 0.95)))
            print(f"  {count} domain(s): federated p50 {points[-1].p50 * 1e3:.1f} ms, "
                  f"slowest alone p50 {alone_p50[slowest] * 1e3:.1f} ms, "
                  f"ratio {points[-1].ratio:.2f}", flush=True)
    return Federation(rows, n, warmup, per_domain, alone_p50, points)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = from_json(data)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = list(range(len(result.points)))
    labels = [str(p.domains) for p in result.points]
    width = 0.38
    left.bar([x - width / 2 for x in xs], [p.slowest_alone_p50 * 1e3 for p in result.points],
             width, label="slowest domain alone", color="#999999")
    left.bar([x + width / 2 for x in xs], [p.p50 * 1e3 for p in result.points], width,
             label="federated, through the network", color="#2a6f97")
    left.set_xticks(xs, labels)
    left.set_xlabel("domains")
    left.set_ylabel("ms (median)")
    left.set_title("Federated GROUP BY latency", fontsize=9)
    left.legend(fontsize=8)
    right.plot(labels, [p.ratio for p in result.points], marker="o", color="#2a6f97")
    right.axhline(GOAL, color="#c0392b", linestyle="--", linewidth=1, label=f"goal {GOAL}×")
    right.set_xlabel("domains")
    right.set_ylabel("federated / slowest alone")
    right.set_title("Ratio (lower is better)", fontsize=9)
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(data: dict[str, Any]) -> str:
    """The section of docs/benchmarks.md."""
    result = from_json(data)
    rows = "\n".join(
        f"| {p.domains} | {p.p50 * 1e3:.1f} ms | {p.p95 * 1e3:.1f} ms | "
        f"{p.slowest_alone_p50 * 1e3:.1f} ms | {p.slowest_alone_p95 * 1e3:.1f} ms | "
        f"{p.ratio:.2f}× |" for p in result.points)
    alone = ", ".join(f"{t * 1e3:.1f}" for t in result.alone_p50)
    return f"""## Federation

A federated GROUP BY through a network node over 1, 2, 4 and 8 domains, against the
slowest of those domains answering its part of the query alone (`bench/federation.py`).
Every domain is a `stockade serve` process with one DuckDB thread, serving
{result.rows:,} synthetic screenings (`bench/screenings.py`) in `raw` mode; the network is a
`stockade network` process; the client is ADBC in the benchmark's process. The query:

```sql
{QUERY}
```

Each domain answers the part the network sends it, with the aggregates split into
mergeable parts:

```sql
{result.domain_sql}
```

"Alone" is that SQL sent straight to one domain over ADBC with nothing else running;
the baseline at *k* domains is the largest median of the first *k* domains (medians per
domain: {alone} ms). Medians and 95th percentiles of {result.n} runs after {result.warmup}
warm-up runs. All processes share this machine's cores, so at 8 domains the domains'
work, which on a real network runs on 8 machines in parallel, competes for the same
cores: the ratio there bounds the network's own cost from above.

![federation](benchmarks-federation.png)

| domains | federated p50 | federated p95 | slowest alone p50 | slowest alone p95 | ratio (p50) |
|---:|---:|---:|---:|---:|---:|
{rows}

Goal: at most {GOAL}× at 8 domains.
"""


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.federation")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    result = measure(args.rows, args.n, args.warmup)
    print(markdown(to_json(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
