"""Property-based tests of the policy planner: whatever SQL comes in, nothing hidden comes out.

Queries are generated (Hypothesis) from a typed grammar of SQL the planner is
meant to accept: projections and expressions, stars, WHERE with comparisons,
AND/OR/NOT, IN, BETWEEN, LIKE, subqueries in FROM and WHERE (correlated too),
CTEs (some named like the protected tables they shadow), joins, UNION,
GROUP BY with aggregates and HAVING, window functions, CASE, casts, string
functions, ORDER BY and LIMIT. A second strategy mixes in adversarial
references that must always be refused: hidden columns, system and table
functions, system tables, file paths, a dataset the role may not read,
``COLUMNS(...)`` and whole-row values.

The oracle is a second DuckDB, the *visible* database: the tables exactly as
the policy promises them to this principal (filtered rows gone, masks applied,
hidden columns dropped), built in Python from the same rows. For every query:

- ``plan_query`` either raises an :class:`~gateway.errors.InputError`, or returns
  SQL; any other exception is a bug;
- a query of the valid grammar that runs on the visible database must be
  planned, and the planned SQL, run over the raw tables, returns the same rows
  (as a multiset, cut to the query's LIMIT and the role's ``max_rows``);
- a query with an adversarial reference is refused by the planner (the engine,
  whose policy subqueries expose only visible columns, would refuse most of them
  too, but invariant 3 wants the planner to); it is never answered;
- in every case the planned result holds no sentinel: hidden values are the
  strings ``SECRET-…`` and the numbers in :data:`HIDDEN_NUMBERS`, and every
  string column of a row the filters remove says ``FILTERED-…``; a DuckDB error
  is acceptable when it is a ``duckdb.Error`` whose message, as the engine
  reports it, carries no sentinel.
"""

from __future__ import annotations

import datetime
import math
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.engine import engine_error
from gateway.errors import InputError, UnknownColumnError
from policy.loader import parse_policy
from policy.pipeline import plan_query
from policy.principal import Principal

POLICY_TEXT = """\
version: 1
domain: {name: prop}
limits: {max_rows: 1000, timeout_s: 10}
datasets:
  clinic:
    tables:
      people:
        source: {format: parquet, path: people.parquet}
        row_filter: "NOT withdrawn"
        columns:
          pid: {hidden: true}
          ssn: {hidden: true}
          withdrawn: {hidden: true}
          zip: {mask: "left(zip, 2) || '***'"}
      visits:
        source: {format: parquet, path: visits.parquet}
        row_filter: "kind <> 'FILTERED-void'"
        columns:
          pid: {hidden: true}
          note: {hidden: true}
  geo:
    tables:
      sites:
        source: {format: parquet, path: sites.parquet}
        row_filter: "NOT closed"
        columns:
          pin: {hidden: true}
          closed: {hidden: true}
  vault:
    tables:
      keys:
        source: {format: parquet, path: keys.parquet}
roles:
  researcher:
    limits: {max_rows: 40}
    datasets:
      clinic:
        mode: raw
        tables:
          people: {row_filter: "site = {user.site}"}
          visits: {row_filter: "score >= {user.min_score}", hidden: [cost]}
      geo: {mode: raw}
"""

POLICY = parse_policy(POLICY_TEXT, base_dir="/")
PRINCIPAL = Principal("rita", "researcher", {"site": "north", "min_score": 3})
MAX_ROWS = 40

SCHEMAS: dict[tuple[str, str], dict[str, str]] = {
    ("clinic", "people"): {
        "pid": "INTEGER", "ssn": "VARCHAR", "name": "VARCHAR", "ref": "VARCHAR",
        "site": "VARCHAR", "age": "INTEGER", "zip": "VARCHAR", "withdrawn": "BOOLEAN",
    },
    ("clinic", "visits"): {
        "vid": "INTEGER", "pid": "INTEGER", "ref": "VARCHAR", "kind": "VARCHAR",
        "day": "DATE", "score": "INTEGER", "cost": "DOUBLE", "note": "VARCHAR",
    },
    ("geo", "sites"): {
        "code": "VARCHAR", "region": "VARCHAR", "beds": "INTEGER", "pin": "VARCHAR",
        "closed": "BOOLEAN",
    },
    ("vault", "keys"): {"k": "VARCHAR", "v": "BIGINT"},
}  # fmt: skip

# --- the data -------------------------------------------------------------------------

#: Every value of a hidden numeric column. Nothing visible comes near 10**9.
HIDDEN_NUMBERS: set[float] = set()
SENTINELS = ("SECRET-", "FILTERED-")


def _pid(i: int) -> int:
    HIDDEN_NUMBERS.add(1_000_000_000 + 7919 * i)
    return 1_000_000_000 + 7919 * i


def _people() -> list[tuple[Any, ...]]:
    rows = []
    for i in range(24):
        site = ("north", "south", "east")[i % 3]
        withdrawn = i % 5 == 0
        shown = site == "north" and not withdrawn
        rows.append((
            _pid(i), f"SECRET-SSN-{i:03}",
            f"p{i}" if shown else f"FILTERED-N{i}",
            f"r{i}" if shown else f"FILTERED-R{i}",
            site, None if i % 7 == 3 else 20 + (i * 7) % 50,
            None if i % 11 == 4 else f"{10 + i}SECRET-ZIP{i}", withdrawn,
        ))  # fmt: skip
    return rows


def _visits() -> list[tuple[Any, ...]]:
    rows = []
    for j in range(60):
        cost = 1_000_000_000.5 + j
        HIDDEN_NUMBERS.add(cost)
        rows.append((
            j, _pid(j % 24), f"r{j % 24}", ("lab", "scan", "consult", "FILTERED-void")[j % 4],
            datetime.date(2024, 1, 1) + datetime.timedelta(days=3 * j), j % 10, cost,
            f"SECRET-NOTE-{j}",
        ))  # fmt: skip
    return rows


PEOPLE = _people()
VISITS = _visits()
SITES = [
    ("north", "Northern", 120, "SECRET-PIN-1", False),
    ("south", "Southern", 90, "SECRET-PIN-2", False),
    ("east", "Eastern", None, "SECRET-PIN-3", False),
    ("west", "FILTERED-Western", 30, "SECRET-PIN-4", True),
]
KEYS = [("SECRET-VAULT-KEY", 1_000_000_001)]
HIDDEN_NUMBERS.add(1_000_000_001)

# What the policy promises this principal, computed in Python (not by the planner).
VISIBLE = {
    ("clinic", "people"): [
        (name, ref, site, age, None if zip_ is None else zip_[:2] + "***")
        for _, _, name, ref, site, age, zip_, withdrawn in PEOPLE
        if not withdrawn and site == "north"
    ],
    ("clinic", "visits"): [
        (vid, ref, kind, day, score)
        for vid, _, ref, kind, day, score, _, _ in VISITS
        if kind != "FILTERED-void" and score >= 3
    ],
    ("geo", "sites"): [(c, r, b) for c, r, b, _, closed in SITES if not closed],
}
VISIBLE_COLUMNS = {
    key: [c for c in SCHEMAS[key] if c not in {"pid", "ssn", "withdrawn", "note", "cost",
                                               "pin", "closed"}]
    for key in VISIBLE
}  # fmt: skip


ENGINE_CONFIG = {"threads": 1, "memory_limit": "512MB"}
QUERY_TIMEOUT_S = 10.0


def _create(con: duckdb.DuckDBPyConnection, key: tuple[str, str], columns: Sequence[str],
            rows: Sequence[tuple[Any, ...]]) -> None:
    dataset, table = key
    types = SCHEMAS[key]
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {dataset}")
    con.execute(f"CREATE TABLE {dataset}.{table} ("
                + ", ".join(f"{c} {types[c]}" for c in columns) + ")")
    if rows:
        marks = ", ".join("?" for _ in columns)
        con.executemany(f"INSERT INTO {dataset}.{table} VALUES ({marks})", list(rows))


def raw_database() -> duckdb.DuckDBPyConnection:
    """The physical ``"dataset"."table"`` the planned SQL reads, every row and column."""
    con = duckdb.connect(":memory:", config=ENGINE_CONFIG)
    for key, rows in (
        (("clinic", "people"), PEOPLE), (("clinic", "visits"), VISITS),
        (("geo", "sites"), SITES), (("vault", "keys"), KEYS),
    ):  # fmt: skip
        _create(con, key, list(SCHEMAS[key]), rows)
    return con


def visible_database() -> duckdb.DuckDBPyConnection:
    """The oracle: only what the policy lets the principal see, under the same names."""
    con = duckdb.connect(":memory:", config=ENGINE_CONFIG)
    con.execute("ATTACH ':memory:' AS prop; USE prop")
    for key, rows in VISIBLE.items():
        _create(con, key, VISIBLE_COLUMNS[key], rows)
    con.execute("SET search_path = 'prop.clinic,prop.geo'")
    return con


RAW = raw_database()
SEEN = visible_database()

# --- the grammar ----------------------------------------------------------------------

TABLES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "people": ("clinic", [("name", "text"), ("ref", "text"), ("site", "text"), ("age", "int"),
                          ("zip", "text")]),
    "visits": ("clinic", [("vid", "int"), ("ref", "text"), ("kind", "text"), ("day", "date"),
                          ("score", "int")]),
    "sites": ("geo", [("code", "text"), ("region", "text"), ("beds", "int")]),
}  # fmt: skip
HIDDEN = {"people": ["pid", "ssn", "withdrawn"], "visits": ["pid", "note", "cost"],
          "sites": ["pin", "closed"]}  # fmt: skip
TYPES = ("int", "text", "bool", "date")
ROWS = {"people": 24, "visits": 60, "sites": 4}
MAX_JOIN_ROWS = 4000  # the largest join (before filters) a FROM clause may build
TEXT_LITERALS = ("'north'", "'p3'", "'r12'", "'lab'", "'scan'", "'x'", "'Northern'", "''")
LIKE_PATTERNS = ("'p%'", "'%1%'", "'r_'", "'%a%'", "'N%'", "'%'")

#: References that must always be refused, by where they go.
ADVERSARIAL_VALUES = {
    "int": ["getenv('HOME')", "current_setting('threads')", "txid_current()",
            "(SELECT count(*) FROM duckdb_tables())", "(SELECT v FROM vault.keys)",
            "(SELECT max(pid) FROM clinic.people)", "nextval('s')", "pg_backend_pid()",
            "(SELECT count(*) FROM information_schema.columns)", "length(version())",
            "(SELECT sum(cost) FROM visits)", "unknown_fn(1)"],
    "text": ["version()", "current_database()", "getenv('USER')", "current_setting('memory_limit')",
             "(SELECT k FROM vault.keys)", "(SELECT min(ssn) FROM people)",
             "(SELECT note FROM clinic.visits LIMIT 1)", "(SELECT pin FROM geo.sites LIMIT 1)",
             "(SELECT content FROM read_text('/etc/hostname'))", "current_schema()",
             "pg_typeof(1)", "error('x')"],
    "bool": ["withdrawn", "closed", "EXISTS (SELECT 1 FROM duckdb_settings())",
             "EXISTS (SELECT 1 FROM vault.keys)", "(SELECT bool_or(withdrawn) FROM people)",
             "starts_with(getenv('HOME'), '/')"],
    "date": ["(SELECT min(day) FROM read_parquet('visits.parquet'))"],
}  # fmt: skip
for _values in ADVERSARIAL_VALUES.values():
    _values += ["{hidden}", "{alias}.{hidden}"]
ADVERSARIAL_TABLES = [
    "vault.keys", "keys", "prop.vault.keys", "information_schema.columns", "duckdb_tables()",
    "duckdb_settings()", "read_parquet('people.parquet')", "'people.parquet'",
    "read_csv('/etc/passwd')", "memory.clinic.people", "pg_catalog.pg_class", "sqlite_master",
    "range(5)", "glob('*')", "query('SELECT * FROM clinic.people')", "system.main.duckdb_settings",
    "other.clinic.people", "pragma_table_info('people')",
]  # fmt: skip
ADVERSARIAL_PROJECTIONS = [
    "COLUMNS('.*')", "COLUMNS(c -> c LIKE '%s%')", "to_json({alias})", "{alias}",
    "list_value({alias})", "{alias}.{hidden}", "{hidden}",
    "upper(CAST({alias}.{hidden} AS TEXT))",
    "row_number() OVER (ORDER BY {alias}.{hidden})", "md5(CAST({hidden} AS TEXT))",
]  # fmt: skip


@dataclass(frozen=True)
class Source:
    """A FROM item and the columns it offers."""

    sql: str
    alias: str
    columns: tuple[tuple[str, str], ...]
    table: str | None = None  # the protected table it reads directly, if any
    rows: int = 60  # at most this many rows, to keep joins small


@dataclass
class Query:
    """A generated query: ``body`` then ``limit`` (kept apart for the oracle)."""

    body: str
    limit: int | None = None
    adversarial: list[str] = field(default_factory=list)

    @property
    def sql(self) -> str:
        return self.body if self.limit is None else f"{self.body} LIMIT {self.limit}"


class Grammar:
    """Draws SQL text from the grammar; ``adversarial`` turns on the references to refuse."""

    def __init__(self, draw: st.DrawFn, adversarial: bool):
        self.draw = draw
        self.adversarial = adversarial
        self.planted: list[str] = []
        self.counter = 0
        self.ctes: list[Source] = []  # the CTEs defined so far: they shadow tables

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def chance(self, p: float) -> bool:
        return bool(self.draw(st.integers(0, 99)) < p * 100)

    def pick(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(list(options)))

    def plant(self, options: Sequence[str], scope: Sequence[Source] = ()) -> str | None:
        """Now and then (only in adversarial mode) a reference that must be refused."""
        if not self.adversarial or not self.chance(0.08):
            return None
        text = str(self.pick(options))
        tables = [s for s in scope if s.table]
        if "{" in text:
            if not tables:
                return None
            source = self.pick(tables)
            text = text.format(alias=source.alias, hidden=self.pick(HIDDEN[source.table]))
        self.planted.append(text)
        return text

    # expressions ----------------------------------------------------------------------

    def columns(self, scope: Sequence[Source], type_: str) -> list[str]:
        names = Counter(name for s in scope for name, _ in s.columns)
        out = []
        for s in scope:
            for name, t in s.columns:
                if t == type_:
                    out.append(f"{s.alias}.{name}")
                    if names[name] == 1:
                        out.append(name)
        return out

    def expr(self, scope: Sequence[Source], type_: str, depth: int = 2) -> str:
        planted = self.plant(ADVERSARIAL_VALUES[type_], scope)
        if planted:
            return planted
        cols = self.columns(scope, type_)
        if depth <= 0 or self.chance(0.45):
            if cols and (type_ != "bool" and self.chance(0.8)):
                return str(self.pick(cols))
            return self.literal(type_)
        return getattr(self, f"_{type_}")(scope, depth - 1)

    def literal(self, type_: str) -> str:
        if type_ == "int":
            return str(self.draw(st.integers(0, 60)))
        if type_ == "text":
            return str(self.pick(TEXT_LITERALS))
        if type_ == "bool":
            return str(self.pick(["TRUE", "FALSE"]))
        return str(self.pick(["DATE '2024-02-01'", "DATE '2024-03-15'"]))

    def _int(self, scope: Sequence[Source], depth: int) -> str:
        e = lambda t="int": self.expr(scope, t, depth)  # noqa: E731
        return str(self.pick([
            lambda: f"({e()} + {e()})", lambda: f"({e()} - {e()})", lambda: f"({e()} * 2)",
            lambda: f"abs({e()})", lambda: f"length({e('text')})", lambda: f"({e()} % 7)",
            lambda: f"CASE WHEN {e('bool')} THEN {e()} ELSE {e()} END",
            lambda: f"coalesce({e()}, -1)", lambda: f"TRY_CAST({e('text')} AS INTEGER)",
            lambda: f"year({e('date')})", lambda: f"greatest({e()}, {e()})",
            lambda: f"CAST({e('bool')} AS INTEGER)", lambda: f"strpos({e('text')}, 'r')",
            lambda: f"({e()} // 3)", lambda: self.scalar_subquery(scope, "int"),
            lambda: f"CAST({e('text')} AS INTEGER)",
        ])())  # fmt: skip

    def _text(self, scope: Sequence[Source], depth: int) -> str:
        e = lambda t="text": self.expr(scope, t, depth)  # noqa: E731
        return str(self.pick([
            lambda: f"upper({e()})", lambda: f"lower({e()})", lambda: f"({e()} || '-' || {e()})",
            lambda: f"substr({e()}, 1, 3)", lambda: f"left({e()}, 2)",
            lambda: f"CAST({e('int')} AS VARCHAR)", lambda: f"replace({e()}, 'r', 'R')",
            lambda: f"coalesce({e()}, 'none')", lambda: f"concat({e()}, {e('int')})",
            lambda: f"CASE WHEN {e('bool')} THEN {e()} ELSE {e()} END",
            lambda: f"trim({e()})", lambda: f"strftime({e('date')}, '%Y-%m')",
            lambda: f"reverse({e()})", lambda: f"lpad({e()}, 6, '.')",
            lambda: f"md5({e()})",
        ])())  # fmt: skip

    def _bool(self, scope: Sequence[Source], depth: int) -> str:
        e = lambda t: self.expr(scope, t, depth)  # noqa: E731
        op = lambda: self.pick(["=", "<>", "<", "<=", ">", ">="])  # noqa: E731
        return str(self.pick([
            lambda: f"{e('int')} {op()} {e('int')}", lambda: f"{e('text')} {op()} {e('text')}",
            lambda: f"{e('date')} {op()} {e('date')}",
            lambda: f"{e('int')} BETWEEN {self.literal('int')} AND {self.literal('int')}",
            lambda: f"{e('text')} LIKE {self.pick(LIKE_PATTERNS)}",
            lambda: f"{e('text')} ILIKE {self.pick(LIKE_PATTERNS)}",
            lambda: f"{e('int')} IN (1, 3, 30, 41)", lambda: f"{e('text')} NOT IN ('lab', 'p6')",
            lambda: f"({e('bool')} AND {e('bool')})", lambda: f"({e('bool')} OR {e('bool')})",
            lambda: f"NOT ({e('bool')})", lambda: f"{e('int')} IS NULL",
            lambda: f"{e('text')} IS NOT NULL", lambda: f"starts_with({e('text')}, 'p')",
            lambda: self.in_subquery(scope), lambda: self.exists(scope),
        ])())  # fmt: skip

    def _date(self, scope: Sequence[Source], depth: int) -> str:
        return self.literal("date")

    def scalar_subquery(self, scope: Sequence[Source], type_: str) -> str:
        source = self.table_source()
        cols = self.columns([source], type_)
        if not cols:
            return self.literal(type_)
        agg = self.pick(["max", "min", "count"])
        return f"(SELECT {agg}({self.pick(cols)}) FROM {source.sql})"

    def in_subquery(self, scope: Sequence[Source]) -> str:
        type_ = self.pick(["int", "text"])
        source = self.table_source()
        inner = self.columns([source], type_)
        if not inner:
            return "TRUE"
        where = f" WHERE {self.expr([source], 'bool', 1)}" if self.chance(0.5) else ""
        neg = "NOT " if self.chance(0.3) else ""
        return (f"{self.expr(scope, type_, 1)} {neg}IN "
                f"(SELECT {self.pick(inner)} FROM {source.sql}{where})")

    def exists(self, scope: Sequence[Source]) -> str:
        """EXISTS, correlated to the outer query when a text column can join."""
        source = self.table_source()
        inner = self.columns([source], "text")
        outer = self.columns(scope, "text")
        if inner and outer and self.chance(0.7):
            cond = f"{source.alias}.{self.pick(inner).split('.')[-1]} = {self.pick(outer)}"
        else:
            cond = self.expr([source], "bool", 1)
        return f"EXISTS (SELECT 1 FROM {source.sql} WHERE {cond})"

    # sources --------------------------------------------------------------------------

    def table_source(self, ctes: Sequence[Source] = (), first: bool = True) -> Source:
        name = self.pick(sorted(TABLES))
        shadowed = [c for c in (ctes or self.ctes) if c.alias == name]
        dataset, columns = TABLES[name]
        alias = self.fresh(name[0])
        planted = self.plant(ADVERSARIAL_TABLES)
        if planted:
            return Source(f"{planted} AS {alias}", alias, tuple(columns), name)
        if shadowed:  # a CTE named like the table: SQL scoping says the CTE wins
            return Source(f"{name} AS {alias}", alias, shadowed[0].columns,
                          rows=shadowed[0].rows)
        spelling = self.pick([name, f"{dataset}.{name}", f"prop.{dataset}.{name}",
                              f'"{name}"', f"{dataset.upper()}.{name.capitalize()}"])
        if first and self.chance(0.2):  # no alias: the table's name is the qualifier
            return Source(spelling, name, tuple(columns), name, ROWS[name])
        return Source(f"{spelling} AS {alias}", alias, tuple(columns), name, ROWS[name])

    def source(self, ctes: Sequence[Source], depth: int, first: bool = True) -> Source:
        roll = self.draw(st.integers(0, 9))
        if roll < 2 and ctes:
            cte = self.pick(ctes)
            alias = self.fresh("c")
            return Source(f"{cte.alias} AS {alias}", alias, cte.columns, rows=cte.rows)
        if roll < 4 and depth < 2:
            inner, outputs, rows = self.select(ctes, depth + 1)
            alias = self.fresh("sq")
            return Source(f"({inner}) AS {alias}", alias, tuple(outputs), rows=rows)
        return self.table_source(ctes, first)

    def from_clause(self, ctes: Sequence[Source], depth: int) -> tuple[str, list[Source]]:
        first = self.source(ctes, depth)
        sql, scope = first.sql, [first]
        for _ in range(self.draw(st.integers(0, 2))):
            other = self.source(ctes, depth, first=False)
            if math.prod(s.rows for s in scope) * other.rows > MAX_JOIN_ROWS:
                break
            kind = self.pick(["JOIN", "LEFT JOIN", "CROSS JOIN", ",", "LATERAL"])
            if kind == "LATERAL":
                other = self.lateral(scope)
                sql += f"{self.pick([',', ' CROSS JOIN'])} {other.sql}"
            elif kind in ("CROSS JOIN", ","):
                sql += f"{'' if kind == ',' else ' '}{kind} {other.sql}"
            else:
                pairs = [(a, b) for t in ("text", "int")
                         for a in self.columns(scope, t) if "." in a
                         for b in self.columns([other], t) if "." in b]  # fmt: skip
                cond = " = ".join(self.pick(pairs)) if pairs else "TRUE"
                sql += f" {kind} {other.sql} ON {cond}"
            scope.append(other)
        return sql, scope

    def lateral(self, scope: Sequence[Source]) -> Source:
        """``LATERAL (SELECT …)`` over the sources before it: one row per outer row."""
        alias = self.fresh("x")
        items: list[str] = []
        outputs: list[tuple[str, str]] = []
        for _ in range(self.draw(st.integers(1, 2))):
            type_ = self.pick(("int", "text"))
            bare = [c for c in self.columns(scope, type_) if "." in c]
            planted = self.plant(["{hidden}"], scope)
            if planted:  # a bare column names the output after itself
                items.append(planted)
                outputs.append((planted, type_))
            elif bare and self.chance(0.4):
                column = self.pick(bare)
                if column.split(".")[1] not in [n for n, _ in outputs]:
                    items.append(column)
                    outputs.append((column.split(".")[1], type_))
            else:
                name = self.fresh("o")
                items.append(f"{self.expr(scope, type_)} AS {name}")
                outputs.append((name, type_))
        if not items:
            items, outputs = ["1 AS one"], [("one", "int")]
        rows = math.prod(s.rows for s in scope)
        return Source(f"LATERAL (SELECT {', '.join(items)}) AS {alias}", alias, tuple(outputs),
                      rows=rows)

    # queries --------------------------------------------------------------------------

    def projection(self, scope: Sequence[Source], type_: str, grouped: bool) -> str:
        if not grouped:
            if self.chance(0.12):
                return self.window(scope, type_)
            return self.expr(scope, type_)
        agg_cols = lambda t: self.columns(scope, t) or [self.literal(t)]  # noqa: E731
        if type_ == "int":
            return str(self.pick([
                lambda: "count(*)", lambda: f"count({self.pick(agg_cols('text'))})",
                lambda: f"count(DISTINCT {self.pick(agg_cols('int'))})",
                lambda: f"sum({self.expr(scope, 'int', 1)})",
                lambda: f"max({self.pick(agg_cols('int'))})",
                lambda: f"count(*) FILTER (WHERE {self.expr(scope, 'bool', 1)})",
                lambda: f"CAST(round(avg({self.pick(agg_cols('int'))})) AS INTEGER)",
            ])())  # fmt: skip
        if type_ == "text":
            col = self.pick(agg_cols("text"))
            return str(self.pick([f"min({col})", f"max({col})",
                                  f"string_agg({col}, ',' ORDER BY {col})"]))
        if type_ == "bool":
            return f"bool_or({self.expr(scope, 'bool', 1)})"
        return f"max({self.pick(agg_cols('date'))})"

    def window(self, scope: Sequence[Source], type_: str) -> str:
        part = self.pick(self.columns(scope, "text") or ["1"])
        order = self.pick(self.columns(scope, "int") or ["1"])
        if type_ == "int":
            return str(self.pick([
                f"rank() OVER (PARTITION BY {part} ORDER BY {order})",
                f"dense_rank() OVER (ORDER BY {order})",
                f"sum({order}) OVER (PARTITION BY {part})", "count(*) OVER ()",
                f"count(*) OVER (PARTITION BY {part})",
            ]))  # fmt: skip
        if type_ == "text":
            return f"max({part}) OVER (PARTITION BY {order})"
        return self.expr(scope, type_)

    def select(
        self, ctes: Sequence[Source], depth: int, signature: Sequence[str] | None = None
    ) -> tuple[str, list[tuple[str, str]], int]:
        """One SELECT: its SQL, its (named) output columns and a bound on its rows."""
        from_sql, scope = self.from_clause(ctes, depth)
        grouped = self.chance(0.3)
        types = list(signature or [self.pick(TYPES) for _ in range(self.draw(st.integers(1, 4)))])
        outputs = [(self.fresh("o"), t) for t in types]
        items: list[str] = []
        keys: list[str] = []
        if grouped:
            candidates = [c for t in ("text", "int") for c in self.columns(scope, t)]
            keys = list(dict.fromkeys(
                self.pick(candidates) for _ in range(self.draw(st.integers(1, 2)))
            )) if candidates else []  # fmt: skip
        for name, t in outputs:
            key_of_type = [k for k in keys if (k in self.columns(scope, t))]
            if key_of_type and self.chance(0.5):
                value = self.pick(key_of_type)
            else:
                value = self.projection(scope, t, grouped)
            items.append(f"{value} AS {name}")
        planted = self.plant(ADVERSARIAL_PROJECTIONS, scope)
        if planted:
            items.insert(0, planted)
        sql = f"SELECT {', '.join(items)} FROM {from_sql}"
        if self.chance(0.5):
            sql += f" WHERE {self.expr(scope, 'bool')}"
        if grouped and keys:
            sql += f" GROUP BY {', '.join(keys)}"
        if grouped and self.chance(0.3):
            having = self.pick(["count(*)", f"sum({self.expr(scope, 'int', 1)})",
                                f"count(DISTINCT {self.expr(scope, 'text', 1)})"])
            having = f"{having} > {self.draw(st.integers(0, 3))}"
            planted = self.plant(["max({hidden}) IS NOT NULL", "count({hidden}) > 0"], scope)
            sql += f" HAVING {planted or having}"
        return sql, outputs, math.prod(s.rows for s in scope)

    def star_select(self, ctes: Sequence[Source]) -> str:
        from_sql, scope = self.from_clause(ctes, 0)
        first = scope[0]
        excluded = self.pick([name for name, _ in first.columns])
        star = self.pick([
            "*", f"{first.alias}.*", f"* EXCLUDE ({excluded})",
            f"{first.alias}.* EXCLUDE ({excluded})",
            f"* REPLACE (upper(CAST({excluded} AS TEXT)) AS {excluded})",
        ]) if len(scope) == 1 else self.pick(["*", f"{first.alias}.*"])  # fmt: skip
        planted = self.plant(ADVERSARIAL_PROJECTIONS, scope)
        star = f"{planted}, {star}" if planted else star
        where = f" WHERE {self.expr(scope, 'bool')}" if self.chance(0.5) else ""
        return f"SELECT {star} FROM {from_sql}{where}"

    def query(self) -> Query:
        ctes = self.ctes
        with_parts: list[str] = []
        for _ in range(self.draw(st.integers(0, 2))):
            body, outputs, rows = self.select(ctes, 1)
            name = self.pick(["people", "visits", "sites"]) if self.chance(0.3) else self.fresh("w")
            if any(c.alias == name for c in ctes):
                name = self.fresh("w")
            with_parts.append(f"{name} AS ({body})")
            ctes.append(Source(name, name, tuple(outputs), rows=rows))
        prefix = f"WITH {', '.join(with_parts)} " if with_parts else ""
        roll = self.draw(st.integers(0, 9))
        if roll < 2:
            body = self.star_select(ctes)
            width = None
        elif roll < 4:
            signature = [self.pick(("int", "text")) for _ in range(self.draw(st.integers(1, 3)))]
            left, _, _ = self.select(ctes, 1, signature)
            right, _, _ = self.select(ctes, 1, signature)
            op = self.pick(["UNION", "UNION ALL", "EXCEPT", "INTERSECT"])
            body = f"{left} {op} {right}"
            width = len(signature)
        else:
            body, outputs, _ = self.select(ctes, 0)
            width = len(outputs)
        body = prefix + body
        if width and self.chance(0.4):
            body += " ORDER BY " + ", ".join(
                f"{i + 1}{self.pick(['', ' DESC'])}" for i in range(width)
            )
        limit = self.draw(st.integers(0, 50)) if self.chance(0.3) else None
        # A planted reference may have been dropped on the way (a join too large).
        return Query(body, limit, [p for p in self.planted if p in body])


@st.composite
def queries(draw: st.DrawFn, adversarial: bool = False) -> Query:
    return Grammar(draw, adversarial).query()


# --- the property ---------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A hashable, comparable form of a result value (floats rounded)."""
    if isinstance(value, float | Decimal):
        f = float(value)
        return f if math.isnan(f) else round(f, 6)
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    return value


def _leaks(value: Any) -> list[str]:
    """The sentinels found in one result value (nested values searched too)."""
    if isinstance(value, str):
        text = value.upper()
        return [s for s in SENTINELS if s.rstrip("-") in text or s.rstrip("-")[::-1] in text]
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float | Decimal):
        return ["hidden number"] if float(value) in HIDDEN_NUMBERS else []
    if isinstance(value, list | tuple):
        return [leak for v in value for leak in _leaks(v)]
    if isinstance(value, dict):
        return [leak for kv in value.items() for v in kv for leak in _leaks(v)]
    if isinstance(value, bytes):
        return _leaks(value.decode("latin-1"))
    return []


@dataclass
class Outcome:
    rows: list[tuple[Any, ...]] | None = None
    error: str | None = None


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> Outcome:
    timer = threading.Timer(QUERY_TIMEOUT_S, con.interrupt)
    timer.start()
    try:
        return Outcome(rows=con.execute(sql).fetchall())
    except duckdb.Error as exc:
        return Outcome(error=str(engine_error(exc, timeout_s=QUERY_TIMEOUT_S)))
    finally:
        timer.cancel()


def check(query: Query) -> None:
    """The property, for one query (see the module docstring)."""
    sql = query.sql
    try:
        plan = plan_query(sql, policy=POLICY, principal=PRINCIPAL, schemas=SCHEMAS)
    except InputError as err:
        for sentinel in SENTINELS:
            assert sentinel not in str(err), f"refusal message leaks {sentinel}: {err}"
        if not query.adversarial:
            seen = _run(SEEN, query.body)
            assert seen.rows is None, (
                f"the planner refused a query the policy allows: {sql}\n  {err}"
            )
        return
    # Anything else raised above is a planner bug and fails the test as it is.
    got = _run(RAW, plan.sql)
    if got.rows is None:
        assert got.error is not None
        leaks = [s for s in SENTINELS if s.rstrip("-") in got.error.upper()]
        assert not leaks, f"error leaks {leaks}: {got.error}\n  {sql}\n  -> {plan.sql}"
    else:
        assert len(got.rows) <= MAX_ROWS, f"{len(got.rows)} rows > max_rows: {sql}"
        for row in got.rows:
            leaks = [leak for value in row for leak in _leaks(value)]
            assert not leaks, f"result leaks {leaks}: {row}\n  {sql}\n  -> {plan.sql}"
    assert not query.adversarial, (
        f"planned a query that uses {query.adversarial} ({got.error or 'answered'}):\n"
        f"  {sql}\n  -> {plan.sql}"
    )
    seen = _run(SEEN, query.body)
    if seen.rows is None and query.limit is not None:
        # A LIMIT may stop the engine before the row that fails (LIMIT 0 runs nothing).
        seen = _run(SEEN, query.sql)
        if seen.rows is not None:
            return
    if seen.rows is None:
        assert got.rows is None, (
            f"ran through the policy but not on the visible data ({seen.error}):\n  {sql}"
        )
        return
    assert got.rows is not None, f"failed through the policy ({got.error}): {sql}\n{plan.sql}"
    want = Counter(tuple(_plain(v) for v in row) for row in seen.rows)
    have = Counter(tuple(_plain(v) for v in row) for row in got.rows)
    assert not have - want, (
        f"rows the visible data does not hold: {list((have - want).elements())[:3]}\n"
        f"  {sql}\n  -> {plan.sql}"
    )
    expected = min(len(seen.rows), MAX_ROWS, query.limit if query.limit is not None else MAX_ROWS)
    assert len(got.rows) == expected, f"{len(got.rows)} rows, expected {expected}: {sql}"


PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(queries())
def test_allowed_queries_return_exactly_what_the_policy_promises(query: Query) -> None:
    check(query)


@PROPERTY
@given(queries(adversarial=True))
def test_adversarial_references_are_refused_and_nothing_leaks(query: Query) -> None:
    check(query)


# --- the oracle itself ------------------------------------------------------------------


def test_the_raw_data_holds_every_sentinel() -> None:
    """The checks have something to find: the raw tables leak when read directly."""
    rows = RAW.execute("SELECT * FROM clinic.people").fetchall()
    found = {leak for row in rows for v in row for leak in _leaks(v)}
    assert found == {"SECRET-", "FILTERED-", "hidden number"}


def test_the_visible_data_holds_no_sentinel() -> None:
    for dataset, table in VISIBLE:
        for row in SEEN.execute(f"SELECT * FROM {dataset}.{table}").fetchall():
            assert not [leak for v in row for leak in _leaks(v)], row


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM people",
        "SELECT p.*, v.kind FROM clinic.people p JOIN visits v ON v.ref = p.ref",
        "WITH people AS (SELECT code AS name FROM sites) SELECT * FROM people",
        "SELECT zip, count(*) AS n FROM people GROUP BY zip ORDER BY 1",
        "SELECT ref FROM people WHERE EXISTS (SELECT 1 FROM visits v WHERE v.ref = people.ref)",
        "SELECT code FROM sites UNION SELECT site FROM people",
        "SELECT * FROM visits ORDER BY vid LIMIT 5",
        "SELECT * FROM visits v, sites s",
    ],
)
def test_hand_written_queries(sql: str) -> None:
    check(Query(sql))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ssn FROM people",
        "SELECT * FROM people ORDER BY pid",
        "SELECT count(*) FROM people GROUP BY withdrawn",
        "SELECT name FROM people WHERE (SELECT max(cost) FROM visits) > 0",
        "SELECT * FROM vault.keys",
        "SELECT version()",
        "SELECT * FROM duckdb_tables()",
        "SELECT COLUMNS('.*') FROM people",
        "SELECT p FROM people p",
    ],
)
def test_hand_written_attacks(sql: str) -> None:
    check(Query(sql, adversarial=[sql]))


# --- holes found by the properties ----------------------------------------------------
#
# Hidden columns the planner once let through, leaving them to the engine (a DuckDB
# binder error): sqlglot's ``Scope.columns`` leaves out unqualified columns under
# HAVING and QUALIFY (they might name an output), and ``qualify`` gives a bare column
# of a FROM-less LATERAL subquery the LATERAL's own alias.
HIDDEN_OUT_OF_SIGHT = [
    ("SELECT name FROM people GROUP BY name HAVING max(ssn) > ''", "ssn"),
    ("SELECT count(*) FROM people HAVING max(pid) > 0", "pid"),
    ("SELECT ref FROM visits GROUP BY ref HAVING count(note) > 0", "note"),
    ("SELECT ref FROM visits v GROUP BY ref HAVING sum(cost) > 0 ORDER BY ref", "cost"),
    ("SELECT name FROM people QUALIFY max(ssn) OVER () > ''", "ssn"),
    ("SELECT name FROM people UNION SELECT kind FROM visits ORDER BY ssn", "ssn"),
    ("SELECT name, (SELECT count(*) FROM visits HAVING max(note) > '') AS n FROM people", "note"),
    ("SELECT x.ssn FROM people p, LATERAL (SELECT ssn) AS x", "ssn"),
    ("SELECT * FROM visits CROSS JOIN LATERAL (SELECT cost) AS x", "cost"),
    ("SELECT * FROM people AS p, LATERAL (SELECT ssn FROM people) AS x", "ssn"),
    ("SELECT x.n FROM people p, LATERAL (SELECT x.ssn AS n) AS x", "ssn"),
]


@pytest.mark.parametrize("sql,hidden", HIDDEN_OUT_OF_SIGHT)
def test_hidden_columns_in_having_and_lateral_are_unknown_columns(sql: str, hidden: str) -> None:
    with pytest.raises(UnknownColumnError, match=f"^Unknown column '{hidden}'") as err:
        plan_query(sql, policy=POLICY, principal=PRINCIPAL, schemas=SCHEMAS)
    assert "Did you mean" not in str(err.value) or f"'{hidden}'?" not in str(err.value)
    check(Query(sql, adversarial=[sql]))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT name AS n FROM people GROUP BY name HAVING n > ''",
        "SELECT name, count(*) AS c FROM people GROUP BY name HAVING c > 0 ORDER BY c",
        "SELECT name FROM people GROUP BY name HAVING max(age) > 0 ORDER BY name",
        "SELECT name FROM people QUALIFY row_number() OVER (ORDER BY age) = 1",
        "SELECT name FROM people UNION SELECT kind FROM visits ORDER BY name",
        "SELECT p.name, x.a FROM people p, LATERAL (SELECT age + 1 AS a) AS x",
        "SELECT * FROM visits CROSS JOIN LATERAL (SELECT score * 2 AS s2) AS x",
    ],
)
def test_outputs_and_lateral_references_still_work(sql: str) -> None:
    check(Query(sql))
