"""dp mode: no query can succeed or fail, or fail differently, because of one person.

Two neighbouring datasets, identical except that one person is added whose values
are canaries built to break functions ('CANARY-RARE-DIAG/987654' where a number,
a time zone, a regular expression or a date part is expected; 987654 where a
small number is; extreme dates, times and intervals). A corpus of dp queries,
generated from every allowed function applied to columns in WHERE and in GROUP BY
(plus the examples of the issues), runs on both: each query must be refused at
plan time on both with the same message, before anything is read or charged, or
run on both; no message may carry a canary.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import pytest
from argon2 import PasswordHasher

import connectors
from gateway.dp import PrivateQueries
from gateway.engine import Engine
from gateway.errors import StockadeError
from gateway.ledger import Ledger
from gateway.state import StateStore
from policy.loader import parse_policy
from policy.principal import Principal
from tests.totality_probe import reachable_functions, signatures_of

CANARY = "CANARY-RARE-DIAG/987654"
CANARY_NUMBER = "987654"

POLICY = """\
version: 1
domain: {name: totality}
datasets:
  clinic:
    tables:
      people:
        source: {format: parquet, path: people.parquet}
        privacy_unit: id
        max_rows_per_unit: 1
        row_filter: "consent"
        columns:
          id: {hidden: true}
          age: {lower: 0, upper: 120}
          score: {lower: 0, upper: 10}
          zip: {mask: "left(zip, 3)"}
roles:
  analyst:
    datasets:
      clinic: {mode: dp, epsilon_per_query: 0.01, budget: {epsilon: 1000000.0, delta: 0.9}}
"""

PEOPLE = 300

#: Ordinary rows: every value fits what a function of its column expects.
_ROWS = f"""
SELECT i AS id, true AS consent,
       ['J45', 'E11', 'I10'][i % 3 + 1] AS diag,
       CAST(i % 50 AS VARCHAR) AS code,
       ['UTC', 'Europe/Paris', 'America/New_York'][i % 3 + 1] AS zone,
       ['a+', '^b', 'c|d'][i % 3 + 1] AS pattern,
       ['year', 'month', 'day'][i % 3 + 1] AS part,
       'note ' || i AS note,
       20 + i % 60 AS age,
       (i % 10)::DOUBLE AS score,
       TIMESTAMPTZ '2020-01-01 00:00:00+00' + INTERVAL (i) HOUR AS ts,
       DATE '2020-01-01' + (i % 365)::INTEGER AS d,
       TIME '08:00:00' + INTERVAL (i % 600) MINUTE AS t,
       INTERVAL (i % 30) DAY AS iv,
       ['a', 'b'] AS tags,
       CAST(10000 + i AS VARCHAR) AS zip
FROM range({PEOPLE}) r(i)"""

#: The added person: a canary in every column.
_CANARY_ROW = f"""
SELECT 1000000 AS id, true AS consent, '{CANARY}' AS diag, '{CANARY}' AS code,
       '{CANARY}' AS zone, '{CANARY}(' AS pattern, 'epoch' AS part, '{CANARY}' AS note,
       {CANARY_NUMBER} AS age, {CANARY_NUMBER}::DOUBLE AS score,
       TIMESTAMPTZ '294247-01-09 00:00:00+00' AS ts, DATE '5877642-06-25' AS d,
       TIME '24:00:00' AS t, INTERVAL '2147483647 months 2147483647 days' AS iv,
       ['{CANARY}', '(', ''] AS tags, '{CANARY}' AS zip"""


def write_neighbours(root: Path) -> tuple[Path, Path]:
    """Two data directories: without and with the canary person."""
    con = duckdb.connect()
    without, with_ = root / "without", root / "with"
    for folder, sql in ((without, _ROWS), (with_, f"{_ROWS} UNION ALL {_CANARY_ROW}")):
        folder.mkdir(parents=True)
        con.execute(f"COPY ({sql}) TO '{folder / 'people.parquet'}' (FORMAT parquet)")
    con.close()
    return without, with_


@dataclass
class Env:
    engine: Engine
    store: StateStore
    ledger: Ledger
    dp: PrivateQueries
    policy: object
    schemas: dict[tuple[str, str], dict[str, str]]
    executed: list[str]

    def plan(self, sql: str, user: str = "alice"):  # type: ignore[no-untyped-def]
        return self.dp.plan(sql, policy=self.policy, principal=Principal(user, "analyst"),
                            schemas=self.schemas)  # type: ignore[arg-type]

    def close(self) -> None:
        self.engine.close()
        self.store.close()


class _CountingEngine(Engine):
    """The engine, remembering every SQL text it was asked to run."""

    executed: list[str]

    def execute(self, sql, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.executed.append(sql)
        return super().execute(sql, *args, **kwargs)


def open_env(root: Path, data: Path) -> Env:
    policy = parse_policy(POLICY, base_dir=str(data))
    engine = _CountingEngine(root / "engine")
    engine.executed = []
    for ds_name, dataset in sorted(policy.datasets.items()):
        for i, (t_name, table) in enumerate(sorted(dataset.tables.items())):
            options = {k: v for k, v in asdict(table.source).items() if v is not None}
            plan = connectors.get(table.source.format).plan(
                options, base_dir=data, alias=f"src_{ds_name}_{i}")
            engine.add_table(ds_name, t_name, plan)
    engine.start()
    store = StateStore(root / "state", hasher=PasswordHasher(memory_cost=8192))
    ledger = Ledger(store)
    schemas = {key: engine.columns(*key) for key in engine.tables()}
    return Env(engine, store, ledger, PrivateQueries(engine, ledger), policy, schemas,
               engine.executed)


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Env]]:
    root = tmp_path_factory.mktemp("totality")
    without, with_ = write_neighbours(root / "data")
    a, b = open_env(root / "a", without), open_env(root / "b", with_)
    yield a, b
    a.close()
    b.close()


@dataclass(frozen=True)
class Outcome:
    refused: str | None  # the message of a refusal at plan time
    failed: str | None  # the message of a failure after planning
    rows: int | None


def outcome(env: Env, sql: str, user: str) -> Outcome:
    try:
        plan = env.plan(sql, user)
    except StockadeError as exc:
        return Outcome(str(exc), None, None)
    try:
        table = env.dp.execute(plan)
    except Exception as exc:  # any failure is an outcome the analyst sees  # noqa: BLE001
        return Outcome(None, f"{type(exc).__name__}: {exc}", None)
    return Outcome(None, None, table.num_rows)


# -- the corpus

#: A column of each type, and (for strings) one per kind of value functions expect.
_STRING_COLUMNS = ("diag", "code", "zone", "pattern", "part")
_COLUMNS = {
    "BIGINT": "age", "INTEGER": "age", "SMALLINT": "age", "TINYINT": "age",
    "HUGEINT": "age", "UBIGINT": "age", "UINTEGER": "age", "DOUBLE": "score",
    "FLOAT": "score", "DECIMAL": "score", "DATE": "d", "TIMESTAMP": "CAST(ts AS TIMESTAMP)",
    "TIMESTAMP WITH TIME ZONE": "ts", "TIME": "t", "INTERVAL": "iv", "BOOLEAN": "consent",
    "VARCHAR[]": "tags", "BIGINT[]": "[age]", "BLOB": "CAST(note AS BLOB)",
}  # fmt: skip
_ORDINARY = {
    "VARCHAR": "'abc'", "BIGINT": "3", "INTEGER": "3", "SMALLINT": "3", "TINYINT": "3",
    "HUGEINT": "3", "UBIGINT": "3", "UINTEGER": "3", "DOUBLE": "1.5", "FLOAT": "1.5",
    "DECIMAL": "1.5", "DATE": "DATE '2020-01-02'", "TIMESTAMP": "TIMESTAMP '2020-01-02'",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ '2020-01-02'", "TIME": "TIME '03:04:05'",
    "INTERVAL": "INTERVAL '1 day'", "BOOLEAN": "true", "VARCHAR[]": "['a', 'b']",
    "BIGINT[]": "[1, 2, 3]", "BLOB": "CAST('abc' AS BLOB)", "LAMBDA": "LAMBDA x: x",
}  # fmt: skip

#: The examples of the issues, and other shapes that used to fail on one row.
ISSUE_EXAMPLES = [
    "CAST(diag AS INT) > 3",
    "timezone(diag, ts) > TIMESTAMP '2020-01-01'",
    "regexp_matches('x', diag || '(')",
    "age * 9223372036854775807 > 1",
    "ln(age - age) > 0",
    "diag = 5",
    "code IN (1, 2)",
    "CAST(code AS INTEGER) IN (1, 2, 3, 4, 5, 6, 7, 8)",
    "CAST(code AS INTEGER) = 1 OR CAST(code AS INTEGER) = 2",
    "array_to_string(CAST(code AS VARCHAR[]), ',') = 'x'",
    "date_part(part, ts) > 0",
    "EXTRACT(epoch FROM ts) > 0",
    "ts AT TIME ZONE zone > TIMESTAMP '2020-01-01'",
    "strptime(code, '%Y') IS NOT NULL",
    "format('{:d}', code) IS NOT NULL",
    "printf('%d', code) IS NOT NULL",
    "json_extract(note, '$.a') IS NOT NULL",
    "CAST(ts AS DATE) > '2020-01-01'",
    "d > '2020-01-01'",
    "age > 30",
    "code",
    "list_reduce(tags, LAMBDA x, y: x || y) IS NOT NULL",
    "CAST(iv AS VARCHAR) IS NOT NULL",
    "epoch_ms(ts) > 0",
    "repeat(note, 3) IS NOT NULL",
    "to_timestamp(score * 1e20) IS NOT NULL",
    "make_date(age, 1, 1) IS NOT NULL",
]


def _calls() -> list[str]:
    """A call of every reachable allowed function: each argument in turn from a
    column (each string column for a string argument), the others ordinary
    literals; one overload per (function, argument, column)."""
    con = duckdb.connect()
    calls: dict[tuple[str, int, str], str] = {}
    try:
        for name in reachable_functions(con):
            if not name.replace("_", "").isalnum():
                continue  # operators: their uses are covered through the SQL forms
            for types in signatures_of(con, name):
                if not all(t in _ORDINARY for t in types):
                    continue
                for position, t in enumerate(types):
                    columns = _STRING_COLUMNS if t == "VARCHAR" else (_COLUMNS.get(t),)
                    for column in columns:
                        if column is None or (name, position, column) in calls:
                            continue
                        args = [_ORDINARY[u] for u in types]
                        args[position] = column
                        calls[(name, position, column)] = f"{name}({', '.join(args)})"
    finally:
        con.close()
    return sorted(set(calls.values()))


def corpus() -> list[str]:
    """dp queries: each call in WHERE and in GROUP BY, and the issues' examples."""
    queries = []
    for call in _calls():
        queries.append(f"SELECT COUNT(*) AS n FROM clinic.people WHERE {call} IS NOT NULL")
        queries.append(f"SELECT {call} AS k, COUNT(*) AS n FROM clinic.people GROUP BY {call}")
    for condition in ISSUE_EXAMPLES:
        queries.append(f"SELECT COUNT(*) AS n FROM clinic.people WHERE {condition}")
    return queries


_users = itertools.count()


def test_the_corpus_covers_every_reachable_function() -> None:
    con = duckdb.connect()
    named = {n for n in reachable_functions(con) if n.replace("_", "").isalnum()}
    con.close()
    called = {c.split("(", 1)[0] for c in _calls()}
    # The rest take only types the corpus has no column of (maps, structs, JSON
    # structures, time zones with time of day, ...).
    assert len(called) >= 0.8 * len(named), sorted(named - called)


#: Grouping keys whose values Python cannot hold (a date in year 5877642): the
#: relation computes them, and converting the noisy answer's rows to Python fails
#: on the dataset with the canary. Post-processing (gateway/dp/queries.py), not the
#: relation: see test_group_keys_out_of_pythons_range_do_not_decide_the_outcome.
POST_PROCESSING = {
    f"SELECT {key} AS k, COUNT(*) AS n FROM clinic.people GROUP BY {key}"
    for key in ("last_day(CAST(ts AS TIMESTAMP))", "last_day(d)", "last_day(ts)",
                "make_date(age, 3, 3)", "make_timestamptz(3, age, 3, 3, 3, 1.5)",
                "time_bucket(INTERVAL '1 day', CAST(ts AS TIMESTAMP))",
                "time_bucket(INTERVAL '1 day', ts)")
}


@pytest.mark.slow
def test_every_query_has_the_same_outcome_on_neighbouring_datasets(
        neighbours: tuple[Env, Env]) -> None:
    a, b = neighbours
    queries = corpus()
    assert POST_PROCESSING <= set(queries)
    refused, ran, differing, leaking = 0, 0, [], []
    for sql in queries:
        if sql in POST_PROCESSING:
            continue
        user = f"u{next(_users)}"
        before_a, before_b = len(a.executed), len(b.executed)
        first, second = outcome(a, sql, user), outcome(b, sql, user)
        if first.refused is not None or second.refused is not None:
            refused += 1
            if first.refused != second.refused:
                differing.append((sql, first, second))
            # refused before anything ran, and nothing charged
            assert len(a.executed) == before_a and len(b.executed) == before_b, sql
            for env in (a, b):
                assert env.ledger.balance(user, "clinic").spent_epsilon == 0, sql
        else:
            ran += 1
            if first.failed != second.failed:
                differing.append((sql, first, second))
        for o in (first, second):
            for text in (o.refused, o.failed):
                if text and (CANARY in text or CANARY_NUMBER in text):
                    leaking.append((sql, text))
    assert not differing, differing[:10]
    assert not leaking, leaking[:10]
    # The corpus is mostly answerable (a date part from the data is refused in every
    # mode, by check_functions, which adds refusals here).
    assert refused > 100 and ran > 5 * refused


def test_group_keys_out_of_pythons_range_do_not_decide_the_outcome(
        neighbours: tuple[Env, Env]) -> None:
    a, b = neighbours
    for sql in sorted(POST_PROCESSING):
        user = f"u{next(_users)}"
        assert outcome(a, sql, user).failed == outcome(b, sql, user).failed, sql


def test_the_issues_examples(neighbours: tuple[Env, Env]) -> None:
    """The attacks of the issues: refused on both datasets with one message, or
    answered on both."""
    a, b = neighbours
    seen = set()
    for condition in ISSUE_EXAMPLES:
        sql = f"SELECT COUNT(*) AS n FROM clinic.people WHERE {condition}"
        user = f"u{next(_users)}"
        first, second = outcome(a, sql, user), outcome(b, sql, user)
        assert first.failed is None and second.failed is None, (sql, first, second)
        assert first.refused == second.refused, sql
        seen.add(first.refused is None)
        for text in (first.refused, second.refused):
            assert not text or CANARY not in text
    assert seen == {True, False}


# -- end to end: ADBC against two gateways on the neighbouring datasets

E2E_QUERIES = [
    # refused at plan time, with a message that depends only on the SQL
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE timezone(zone, ts) > TIMESTAMP '2020-01-01'",
     "refused"),
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE date_part(part, ts) > 0", "refused"),
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE ts AT TIME ZONE diag IS NOT NULL",
     "refused"),
    # answered on both: errors on the canary's row became NULL
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE CAST(diag AS INT) > 3", "answered"),
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE regexp_matches('x', pattern || '(')",
     "answered"),
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE age * 9223372036854775807 > 1", "answered"),
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE code = 5", "answered"),
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE CAST(code AS INTEGER) IN (1, 2, 3, 4, 5, 6)",
     "answered"),
    ("SELECT COUNT(*) AS n FROM clinic.people WHERE ln(age - 20) > 1", "answered"),
]

E2E_POLICY = POLICY + """\
  owner: {admin: true}
"""


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from gateway.serving import start_server
    from gateway.settings import load_settings

    root = tmp_path_factory.mktemp("totality_e2e")
    running = []
    for folder in write_neighbours(root / "data"):
        (folder / "policy.yaml").write_text(E2E_POLICY)
        settings = load_settings({"policy": str(folder / "policy.yaml"),
                                  "data_dir": str(folder / "state"), "port": 0,
                                  "memory_limit": "1GB"}, env={})
        server, domain, url, _ = start_server(settings)
        domain.store.add_user("eve", "analyst", "eve-password", {})
        running.append((server, domain, url))
    yield [url for _, _, url in running], [domain for _, domain, _ in running]
    for server, domain, _ in running:
        server.shutdown()
        domain.close()


def _adbc_outcome(url: str, sql: str) -> tuple[str, str]:
    import adbc_driver_flightsql.dbapi as flight_sql
    import adbc_driver_manager

    conn = flight_sql.connect(url, db_kwargs={"username": "eve", "password": "eve-password"},
                              autocommit=True)
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            table = cur.fetch_arrow_table()
            return "answered", str(table.num_rows)
        except adbc_driver_manager.Error as err:
            return "refused", str(err)
        finally:
            cur.close()
    finally:
        conn.close()


def test_adbc_outcomes_are_the_same_on_neighbouring_gateways(gateways) -> None:  # type: ignore[no-untyped-def]
    urls, domains = gateways
    for sql, expected in E2E_QUERIES:
        spent = [d.ledger.balance("eve", "clinic").spent_epsilon for d in domains]
        (kind_a, text_a), (kind_b, text_b) = (_adbc_outcome(u, sql) for u in urls)
        assert kind_a == kind_b == expected, (sql, text_a, text_b)
        assert CANARY not in text_a + text_b and CANARY_NUMBER not in text_a + text_b
        if expected == "refused":
            assert text_a == text_b, sql
            # policy.totality's refusal, or check_functions' for a date part from the
            # data (refused in every mode): both at plan time, from the SQL alone.
            assert ("can fail on a value of the data" in text_a
                    or "must be written in the query" in text_a), text_a
            after = [d.ledger.balance("eve", "clinic").spent_epsilon for d in domains]
            assert after == spent, sql  # refused before anything was charged
