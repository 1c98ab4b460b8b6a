"""Where the time of one dp query through the gateway goes, stage by stage.

A gateway runs in this process (:func:`gateway.serving.start_server`, as the tests
start it) over the dp benchmark's file and policy (:mod:`bench.dp_gateway`), and an
ADBC connection sends the benchmark's query with a new WHERE constant each call.
Each stage of the dp path is timed by wrapping the function that does it (wall
clock, :func:`time.perf_counter`; nothing else is instrumented, so the cost of the
timing is a few microseconds a stage):

- the three Flight calls ADBC makes on the server (CreatePreparedStatement with the
  parameter schema, GetFlightInfo, DoGet) and, inside them, **route** (is it a dp
  query), **plan** (parse, policy rules, translate), **price** (mechanisms and
  odometer), **type-check** (DuckDB binds the aggregate query; the release over no
  rows), **charge**, **read** (the aggregate query over the snapshot), **release**
  (noise and post-processing) with its **bootstrap intervals**, **store** the
  answer, **audit**;
- **ADBC and gRPC** is the call's time at the client less the three calls' time at
  the server (serialisation, the network stack on loopback, the driver, and the
  ClosePreparedStatement call).

A stage that a call does not reach (a cache answered) counts 0 ms for that call.
Medians over the calls, in milliseconds; stages nest as listed by :data:`STAGES`.
Names of private functions are looked up when the profile runs: a renamed one is
reported missing, never silently left out.
"""

from __future__ import annotations

import importlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench import dp_gateway
from bench.stats import adbc_connect

#: (label, module, attribute path, depth): what is timed, in the order shown. Depth 1 is
#: a Flight call at the server; deeper stages run inside the calls above them (route and
#: plan in all three calls: after the first, from a cache).
STAGES: tuple[tuple[str, str, str, int], ...] = (
    ("CreatePreparedStatement", "gateway.server", "DomainServer.query_schema", 1),
    ("parameter schema", "gateway.server", "DomainServer.parameter_schema", 2),
    ("GetFlightInfo (computes the answer)", "gateway.server",
     "DomainServer.execution_schema", 1),
    ("DoGet", "gateway.server", "DomainServer.execute_query", 1),
    ("route (is it dp?)", "gateway.policy_state", "PolicyState.reads_dp", 2),
    ("plan", "gateway.dp.queries", "PrivateQueries.plan", 2),
    ("price", "gateway.dp.queries", "PrivateQueries._priced_plan", 2),
    ("type-check: bind", "gateway.engine", "Engine.result_schema", 2),
    ("type-check: release over no rows", "gateway.dp.queries", "release#empty", 2),
    ("stored answer lookup", "gateway.ledger", "Ledger.answer", 2),
    ("charge", "gateway.ledger", "Ledger.charge", 2),
    ("read", "gateway.dp.queries", "PrivateQueries._reading", 2),
    ("release", "gateway.dp.queries", "release#rows", 2),
    ("noise", "gateway.dp.release", "_draw", 3),
    ("outputs, HAVING, ORDER BY", "gateway.dp.release", "_evaluate", 3),
    ("bootstrap intervals", "gateway.dp.release", "_simulated_widths", 3),
    ("store the answer", "gateway.ledger", "Ledger.store_answer", 2),
    ("audit (queued)", "gateway.audit", "AuditLog.safe_append", 2),
)
TOP = [label for label, _, _, depth in STAGES if depth == 1]
CALL, GRPC = "ADBC execute + fetch (client)", "ADBC and gRPC"


class _Clock:
    """Sums of wall time per label for the current call."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.lock = threading.Lock()

    def add(self, label: str, seconds: float) -> None:
        with self.lock:
            self.now[label] = self.now.get(label, 0.0) + seconds

    def take(self) -> dict[str, float]:
        with self.lock:
            taken, self.now = self.now, {}
        return taken


def _timed(clock: _Clock, label: str, fn: Callable[..., Any], *, rows: bool | None = None
           ) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if rows is None or (args[1].num_rows > 0) == rows:
                clock.add(label, time.perf_counter() - started)
    return wrapper


def _timed_context(clock: _Clock, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            with fn(*args, **kwargs) as value:
                yield value
        finally:
            clock.add(label, time.perf_counter() - started)
    return wrapper


@contextmanager
def instrumented(clock: _Clock) -> Iterator[list[str]]:
    """Wrap every stage's function for the ``with`` block; yields the labels not found."""
    missing: list[str] = []
    undo: list[tuple[Any, str, Any]] = []
    wrapped_release = False
    try:
        for label, module_name, path, _ in STAGES:
            module = importlib.import_module(module_name)
            if path.startswith("release#"):
                if wrapped_release:
                    continue
                original = getattr(module, "release", None)
                if original is None:
                    missing.append(label)
                    continue
                empty = _timed(clock, "type-check: release over no rows", original, rows=False)
                full = _timed(clock, "release", original, rows=True)

                def both(*args: Any, _e: Any = empty, _f: Any = full, **kwargs: Any) -> Any:
                    return (_f if args[1].num_rows > 0 else _e)(*args, **kwargs)
                undo.append((module, "release", original))
                module.release = both  # type: ignore[attr-defined]
                wrapped_release = True
                continue
            owner: Any = module
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent, None)
            original = getattr(owner, name, None) if owner is not None else None
            if original is None:
                missing.append(label)
                continue
            wrap = _timed_context if name == "_reading" else _timed
            undo.append((owner, name, original))
            setattr(owner, name, wrap(clock, label, original))
        yield missing
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def profile(data: Path, work: Path, calls: int, *, first: int = 0) -> dict[str, Any]:
    """Median ms per stage of ``calls`` dp queries sent through ADBC (see the module doc)."""
    from bench.dp import query_for
    from bench.servers import add_users
    from gateway.serving import start_server
    from gateway.settings import load_settings

    work.mkdir(parents=True, exist_ok=True)
    (work / "policy.yaml").write_text(dp_gateway.policy_text(data))
    add_users(work / "state", [(dp_gateway.DP_USER, "analyst", dp_gateway.DP_PASSWORD)])
    settings = load_settings({"policy": str(work / "policy.yaml"),
                              "data_dir": str(work / "state"), "port": 0}, env={})
    clock = _Clock()
    samples: dict[str, list[float]] = {}
    with ExitStack() as stack:
        server, domain, url, _ = start_server(settings)
        stack.callback(domain.close)
        stack.callback(server.shutdown)
        connection = adbc_connect(url, dp_gateway.DP_USER, dp_gateway.DP_PASSWORD)
        stack.callback(connection.close)
        with instrumented(clock) as missing:
            for i in range(-2, calls):  # two warm-up calls
                sql = query_for(first + i + 2).replace("FROM t", "FROM bench.t")
                clock.take()
                started = time.perf_counter()
                dp_gateway.GatewayClients.call(connection, sql)
                total = time.perf_counter() - started
                stages = clock.take()
                if i < 0:
                    continue
                stages[CALL] = total
                stages[GRPC] = total - sum(stages.get(t, 0.0) for t in TOP)
                for label in [CALL, GRPC, *(s[0] for s in STAGES)]:
                    samples.setdefault(label, []).append(stages.get(label, 0.0) * 1000)
    return {"calls": calls, "missing": missing,
            "stages": {label: statistics.median(v) for label, v in samples.items()}}


def table(result: dict[str, Any]) -> str:
    """The breakdown as a Markdown table (nested stages indented)."""
    stages = result["stages"]
    total = stages[CALL]
    rows = [(CALL, 0), *((label, depth) for label, _, _, depth in STAGES), (GRPC, 1)]
    lines = ["| stage | median ms | of the call |", "|---|---:|---:|"]
    for label, depth in rows:
        ms = stages.get(label, 0.0)
        indent = "&nbsp;" * 4 * depth
        lines.append(f"| {indent}{label} | {ms:.2f} | {100 * ms / total:.0f} % |")
    if result.get("missing"):
        lines.append(f"| (not found: {', '.join(result['missing'])}) | | |")
    return "\n".join(lines) + "\n"
