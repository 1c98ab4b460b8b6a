"""Helpers of the dp audit (tests/test_dp_audit.py, bench/dp_coverage.py).

Two parts:

- **neighbouring gateways**: two real domain gateways over datasets that are
  identical except for one added person, whose values carry a canary
  (:data:`CANARY` in text columns, :data:`CANARY_NUMBER` in numeric ones), and
  :func:`observe`, which records what an analyst sees of one query through
  ADBC: success or the error's text, the answer, its metadata, and what the
  ledger charged;
- **interval coverage**: a table of 200 groups of known size and known values,
  and :func:`coverage`, which runs fresh grouped queries in process and counts
  how often each column's reported 95 % interval holds the true value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

#: The added person's text values and its number (in income and age).
CANARY = "CANARY-RARE-DIAG/987654"
CANARY_NUMBER = 987654
#: Fragments of the canary that must never reach an analyst (case-insensitive).
CANARY_FRAGMENTS = ("canary", "rare-diag", "987654", "987,654", "9.87654")

PEOPLE = 2_000
GROUPS = 10  # grp 'g0' … 'g9', 200 people each
REGIONS = ("east", "north", "south", "west")
PASSWORD = "audit-password"

NEIGHBOUR_POLICY = """\
version: 1
domain: {name: audit}
datasets:
  clinic:
    tables:
      people:
        source: {format: parquet, path: people.parquet}
        privacy_unit: pid
        max_rows_per_unit: 1
        columns:
          pid: {hidden: true}
          income: {lower: 0, upper: 100}
          age: {lower: 0, upper: 100}
        public_keys: {region: [east, north, south, west, atlantis]}
      known:
        source: {format: parquet, path: people.parquet}
        privacy_unit: pid
        max_rows_per_unit: 1
        columns:
          pid: {hidden: true}
          income: {lower: 0, upper: 100}
        public_keys: {region: [east, north, south, west]}
roles:
  analyst:
    datasets:
      clinic: {mode: dp, epsilon_per_query: 1.0, budget: {epsilon: 1000000, delta: 0.5}}
  owner: {admin: true}
"""


def write_people(root: Path, *, added: bool) -> None:
    """``root/people.parquet``: :data:`PEOPLE` people, plus the canary person if ``added``.

    Everyone's values are ordinary (codes are numbers as text, time zones valid,
    income and age within the policy's bounds); only the added person's are not:
    the canary in every text column, :data:`CANARY_NUMBER` in income and age, and
    a region nobody else has ('atlantis').
    """
    root.mkdir(parents=True, exist_ok=True)
    regions = "['" + "', '".join(REGIONS) + "']"
    extra = (f"UNION ALL SELECT {PEOPLE} AS pid, 'g3' AS grp, 'atlantis' AS region, "
             f"'{CANARY}' AS diag, '{CANARY}' AS code, '{CANARY}' AS tz, "
             f"{CANARY_NUMBER}::DOUBLE AS income, {CANARY_NUMBER}::INTEGER AS age, "
             "TIMESTAMP '2024-01-01 00:00:00' AS ts") if added else ""
    con = duckdb.connect()
    try:
        con.execute(f"""
            COPY (SELECT i AS pid, 'g' || (i % {GROUPS}) AS grp,
                         {regions}[1 + i % 4] AS region,
                         ['flu', 'cold', 'asthma', 'gout'][1 + (i // 4) % 4] AS diag,
                         CAST(10 + i % 90 AS VARCHAR) AS code,
                         ['UTC', 'Europe/Paris', 'America/New_York'][1 + i % 3] AS tz,
                         (i % 100) + 0.5 AS income, (i % 90)::INTEGER AS age,
                         TIMESTAMP '2024-01-01 00:00:00' + to_hours(i) AS ts
                  FROM range({PEOPLE}) r(i) {extra})
            TO '{root / "people.parquet"}' (FORMAT parquet)""")
    finally:
        con.close()
    (root / "policy.yaml").write_text(NEIGHBOUR_POLICY)


@dataclass
class Running:
    """One gateway on loopback over one of the two datasets."""

    name: str
    root: Path
    url: str
    server: Any
    domain: Any
    connections: dict[str, Any] = field(default_factory=dict)

    def connect(self, user: str) -> Any:
        """``user``'s ADBC connection, opened once (a login checks a password hash)."""
        import adbc_driver_flightsql.dbapi as flight_sql

        if user not in self.connections:
            self.connections[user] = flight_sql.connect(
                self.url, db_kwargs={"username": user, "password": PASSWORD}, autocommit=True)
        return self.connections[user]

    def spent(self, user: str) -> tuple[float, float]:
        """(ε, δ) charged to ``user`` on dataset ``clinic`` so far (from the ledger)."""
        charges = self.domain.ledger.charges(user, "clinic")
        return (math.fsum(c[2] for c in charges), math.fsum(c[3] for c in charges))

    def stop(self) -> None:
        for conn in self.connections.values():
            conn.close()
        self.server.shutdown()
        self.domain.close()


def start(root: Path, name: str, *, added: bool) -> Running:
    """Write the dataset (with or without the added person) and start its gateway."""
    from gateway.serving import start_server
    from gateway.settings import load_settings

    write_people(root, added=added)
    settings = load_settings({"policy": str(root / "policy.yaml"),
                              "data_dir": str(root / "state"), "port": 0,
                              "memory_limit": "512MB", "threads": 1}, env={})
    os.environ.pop("STOCKADE_ADMIN_PASSWORD", None)
    server, domain, url, _ = start_server(settings)
    return Running(name, root, url, server, domain)


@dataclass(frozen=True)
class Outcome:
    """What an analyst sees of one query, and what the ledger charged for it."""

    ok: bool
    message: str  # the error's text ('' on success)
    status: str  # the ADBC status of the error ('' on success)
    charged: tuple[float, float]  # (ε, δ) the ledger recorded for this query
    table: pa.Table | None = field(default=None, compare=False)

    @property
    def shape(self) -> tuple[Any, ...]:
        """What must not depend on the data: success, message, status, charge, schema."""
        schema = None
        if self.table is not None:
            schema = tuple((f.name, str(f.type)) for f in self.table.schema)
        return (self.ok, self.message, self.status, self.charged, schema)


def observe(gateway: Running, user: str, sql: str) -> Outcome:
    """Run ``sql`` as ``user`` through ADBC (execute + fetch) and record the outcome."""
    import adbc_driver_manager

    before = gateway.spent(user)
    cur = gateway.connect(user).cursor()
    try:
        cur.execute(sql)
        table = cur.fetch_arrow_table()
        ok, message, status = True, "", ""
    except adbc_driver_manager.Error as exc:
        table, ok, message, status = None, False, str(exc), exc.status_code.name
    finally:
        cur.close()
    after = gateway.spent(user)
    charged = (round(after[0] - before[0], 12), round(after[1] - before[1], 15))
    return Outcome(ok, message, status, charged, table)


def leaks(text: str) -> list[str]:
    """The canary fragments found in ``text`` (case-insensitive).

    >>> leaks("Unknown TimeZone 'Canary-Rare-Diag/987654'")
    ['canary', 'rare-diag', '987654']
    >>> leaks("Could not convert string '…' to INT32")
    []
    """
    lowered = text.lower()
    return [f for f in CANARY_FRAGMENTS if f in lowered]


def metadata_text(table: pa.Table) -> str:
    """Every metadata key and value of ``table`` and of its fields, as one text."""
    parts = [f"{k!r}{v!r}" for k, v in (table.schema.metadata or {}).items()]
    for f in table.schema:
        parts.extend(f"{k!r}{v!r}" for k, v in (f.metadata or {}).items())
    return " ".join(parts)


# -- interval coverage ---------------------------------------------------------------

#: 200 groups of 300 people each (one row per person). No group is censored even at
#: ε = 0.1: the key count's threshold there is about 132, and a group of 300 stays
#: above it unless its Laplace noise of scale 10 is below −168 (probability e^-16.8).
COVERAGE_GROUPS = 200
COVERAGE_SIZE = 300
COVERAGE_POLICY = """\
version: 1
domain: {name: coverage}
datasets:
  lab:
    tables:
      g:
        source: {format: parquet, path: coverage.parquet}
        privacy_unit: pid
        max_rows_per_unit: 1
        columns:
          pid: {hidden: true}
          x: {lower: 0, upper: 100}
          n: {lower: 0, upper: 100}
roles:
  analyst:
    datasets:
      lab: {mode: dp, epsilon_per_query: 1.0, budget: {epsilon: 1000000, delta: 0.5}}
"""
#: The columns measured, each with its true value per group (from the data).
COVERAGE_COLUMNS = ("count", "sum", "avg", "var", "stddev", "sum_int")
COVERAGE_SQL = ("SELECT g, COUNT(*) AS count, SUM(x) AS sum, AVG(x) AS avg, VAR_POP(x) AS var, "
                "STDDEV_POP(x) AS stddev, SUM(n) AS sum_int FROM lab.g "
                "WHERE x > -{i} GROUP BY g")


def write_coverage_data(root: Path, size: int = COVERAGE_SIZE) -> dict[str, dict[int, float]]:
    """Write ``coverage.parquet`` (:data:`COVERAGE_GROUPS` groups of ``size`` people; x a
    DOUBLE in [0, 100), n an INTEGER in [0, 9]) and the policy; return the true value
    of each measured column per group."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "coverage.parquet"
    con = duckdb.connect()
    try:
        con.execute(f"""
            CREATE TABLE t AS
            SELECT row_number() OVER () - 1 AS pid, g,
                   ((j * 7919 + g * 104729) % 10000) / 100.0 AS x,
                   ((j * 31 + g) % 10)::INTEGER AS n
            FROM range({COVERAGE_GROUPS}) a(g), range({int(size)}) b(j)
        """)
        con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
        rows = con.execute(
            "SELECT g, count(*), sum(x), avg(x), var_pop(x), stddev_pop(x), sum(n) "
            "FROM t GROUP BY g").fetchall()
    finally:
        con.close()
    (root / "policy.yaml").write_text(COVERAGE_POLICY)
    truth: dict[str, dict[int, float]] = {c: {} for c in COVERAGE_COLUMNS}
    for g, *values in rows:
        for column, value in zip(COVERAGE_COLUMNS, values, strict=True):
            truth[column][int(g)] = float(value)
    return truth


@dataclass
class Coverage:
    """How often one column's reported 95 % interval held the true value."""

    column: str
    epsilon: float
    hits: int = 0
    draws: int = 0
    reported: list[float] = field(default_factory=list)  # ci95_coverage, when reported

    @property
    def rate(self) -> float:
        return self.hits / self.draws if self.draws else math.nan

    @property
    def se(self) -> float:
        """Binomial standard error of :attr:`rate`."""
        return math.sqrt(max(self.rate * (1 - self.rate), 1e-12) / self.draws)

    @property
    def claimed(self) -> float:
        """The coverage the answer claimed (0.95 unless a whole-number column says more)."""
        return sum(self.reported) / len(self.reported) if self.reported else 0.95


def _half_widths(table: pa.Table, column: str) -> list[float | None]:
    meta = table.schema.field(column).metadata or {}
    by_row = meta.get(b"stockade.dp.ci95_half_width_by_row")
    if by_row is not None:
        return list(json.loads(by_row))
    width = float(meta[b"stockade.dp.ci95_half_width"])
    return [width] * table.num_rows


@contextmanager
def coverage_domain(root: Path, size: int = COVERAGE_SIZE
                    ) -> Iterator[tuple[Any, dict[str, dict[int, float]]]]:
    """A domain (in process, no server) over the coverage data, and the true values."""
    from gateway.domain import Domain

    truth = write_coverage_data(root, size)
    domain = Domain.open(root / "policy.yaml", root / "state")
    try:
        yield domain, truth
    finally:
        domain.close()


def coverage(domain: Any, truth: dict[str, dict[int, float]], epsilon: float, queries: int,
             *, start: int = 0, columns: Sequence[str] = COVERAGE_COLUMNS
             ) -> dict[str, Coverage]:
    """Run ``queries`` fresh grouped queries at ``epsilon`` and count covering intervals.

    Each query is new SQL (a no-op ``WHERE x > -i``), so it is answered, not read
    from the result cache; each released group is one draw per column. A NULL
    answer (a ratio whose noisy denominator is not positive) counts as a miss.
    """
    from policy.principal import Principal

    who = Principal("analyst", "analyst")
    found = {c: Coverage(c, epsilon) for c in columns}
    for i in range(start, start + queries):
        plan = domain.dp_plan(who, COVERAGE_SQL.format(i=i + 1), epsilon=epsilon)
        table = domain.dp.execute(plan)
        groups = table.column("g").to_pylist()
        for column in columns:
            result = found[column]
            meta = table.schema.field(column).metadata or {}
            claimed = meta.get(b"stockade.dp.ci95_coverage")
            values = table.column(column).to_pylist()
            for g, value, width in zip(groups, values, _half_widths(table, column),
                                       strict=True):
                result.draws += 1
                if claimed is not None:
                    result.reported.append(float(claimed))
                if value is not None and width is not None \
                        and abs(float(value) - truth[column][int(g)]) <= width:
                    result.hits += 1
    return found
