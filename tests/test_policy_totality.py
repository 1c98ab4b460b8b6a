"""policy.totality: expressions that read rows cannot fail on one person's value.

The table of calls whose errors escape ``TRY`` is re-measured here on the
installed DuckDB (a DuckDB upgrade that changes it fails this file), and each
rule of the rewrite is checked against DuckDB on extreme values.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from policy.calls import duckdb_call
from policy.totality import (
    DISABLED_OPTIMIZERS,
    ESCAPES_TRY,
    MAX_REPEAT,
    PartialFunctionError,
    check_total,
    make_total,
)

ROOT = Path(__file__).resolve().parents[1]


def parse(sql: str) -> exp.Expr:
    return sqlglot.parse_one(sql, read="duckdb")


def total(sql: str, types: dict[str, str] | None = None, *, predicate: bool = True) -> str:
    return make_total(parse(sql), types=types, predicate=predicate).sql("duckdb")


TYPES = {"age": "BIGINT", "name": "VARCHAR", "d": "DATE", "ts": "TIMESTAMP WITH TIME ZONE",
         "score": "DOUBLE", "flag": "BOOLEAN", "big": "HUGEINT", "price": "DECIMAL(18,3)",
         "tiny": "TINYINT"}


# -- the rewrite


@pytest.mark.parametrize(("sql", "expected"), [
    # plain comparisons with a literal of a compatible type stay as written
    ("age > 30", "age > 30"),
    ("30 < age", "30 < age"),
    ("age BETWEEN 1 AND 9", "age BETWEEN 1 AND 9"),
    ("age IN (1, 2, 3)", "age IN (1, 2, 3)"),
    ("name = 'x' AND NOT flag", "name = 'x' AND NOT flag"),
    ("score >= 1.5", "score >= 1.5"),
    ("price > -3", "price > -3"),
    ("name IS NULL", "name IS NULL"),
    ("age = d", "TRY(age = d)"),
    # a date literal becomes a constant that cannot fail
    ("d >= '2020-01-01'", "d >= TRY(CAST('2020-01-01' AS DATE))"),
    ("'2020-01-01' <= ts", "TRY(CAST('2020-01-01' AS TIMESTAMPTZ)) <= ts"),
    # implicit casts, overflow, decimals that do not fit, unknown types: TRY
    ("name = 5", "TRY(name = 5)"),
    ("age = 'x'", "TRY(age = 'x')"),
    ("age IN (1, 'x')", "TRY(age IN (1, 'x'))"),
    ("tiny = 0.000000000000000000000000000000000001",
     "TRY(tiny = 0.000000000000000000000000000000000001)"),
    ("big = 1.5", "TRY(big = 1.5)"),
    ("age = 1.5", "TRY(age = 1.5)"),
    ("age * 9223372036854775807 > 1", "TRY(age * 9223372036854775807 > 1)"),
    ("masked = 3", "TRY(masked = 3)"),
    ("CAST(name AS INT) > 3 OR age < 3", "TRY(CAST(name AS INT) > 3) OR age < 3"),
    # a condition that is not boolean by its form is cast inside the TRY
    ("name", "TRY(CAST(name AS BOOLEAN))"),
    ("flag", "flag"),
    ("regexp_matches('x', name || '(')", "TRY(REGEXP_MATCHES('x', name || '('))"),
])
def test_make_total_condition(sql: str, expected: str) -> None:
    assert total(sql, TYPES) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    ("age", "age"),
    ("'***'", "'***'"),
    ("left(name, 3)", "TRY(LEFT(name, 3))"),
    ("age // 10", "TRY(age // 10)"),
    ("CASE WHEN age > 3 THEN 'a' END", "TRY(CASE WHEN age > 3 THEN 'a' END)"),
])
def test_make_total_value(sql: str, expected: str) -> None:
    assert total(sql, TYPES, predicate=False) == expected


def test_make_total_does_not_change_its_input() -> None:
    where = parse("CAST(name AS INT) > 3")
    before = where.sql("duckdb")
    make_total(where, types=TYPES, predicate=True)
    assert where.sql("duckdb") == before


# -- the check


@pytest.mark.parametrize(("sql", "function", "col"), [
    ("timezone(name, ts)", "timezone()", 10),
    ("ts AT TIME ZONE name", "AT TIME ZONE", 17),
    ("date_part(name, ts)", "date_part()", 11),
    ("datepart(lower(name), d)", "datepart()", 10),
    ("date_trunc(name || '', ts)", "date_trunc()", 12),
    ("make_timestamptz(2020, 1, 1, 0, 0, 0, name)", "make_timestamptz()", 39),
    # sqlglot writes this argument itself (NAME): the message points at the call
    ("time_bucket(INTERVAL '1 day', ts, name)", "time_bucket()", 1),
    ("like_escape(name, 'a%', name)", "like_escape()", 25),
    ("array_length([1, 2], age)", "array_length()", 22),
    ("list_reduce([age], LAMBDA x, y: x + y)", "list_reduce()", 14),
    ("repeat(name, age)", "repeat()", 14),
    ("lpad(name, age, '*')", "lpad()", 12),
])
def test_check_total_refuses_arguments_from_the_data(sql: str, function: str,
                                                      col: int) -> None:
    with pytest.raises(PartialFunctionError) as err:
        check_total(parse(sql), types=TYPES)
    assert str(err.value).startswith(f"{function} can fail on a value of the data")
    assert (err.value.line, err.value.col) == (1, col)


@pytest.mark.parametrize("sql", [
    "timezone('Bad/Zone', ts)",
    "ts AT TIME ZONE 'CANARY'",
    "date_part('era', INTERVAL '1 day')",
    "date_trunc('timezone', ts)",
    "time_bucket(INTERVAL '0 days', CAST(ts AS TIMESTAMP))",
    "time_bucket(INTERVAL '-1 day', CAST(d AS TIMESTAMP))",
    "like_escape(name, 'a%', 'ab')",
    "array_length([1], 2)",
    "list_reduce([], LAMBDA x, y: x)",
    f"repeat(name, {MAX_REPEAT + 1})",
    "rpad(name, 1000000000, '*')",
    "regexp_extract(name, '(')",
    "regexp_replace(name, '[', 'x')",
])
def test_check_total_refuses_literals_that_fail_on_any_row(sql: str) -> None:
    with pytest.raises(PartialFunctionError, match="fails on this literal argument"):
        check_total(parse(sql), types=TYPES)


@pytest.mark.parametrize("sql", [
    "timezone('UTC', ts)",
    "timezone('europe/paris', ts)",
    "ts AT TIME ZONE 'Europe/Paris'",
    "date_part('year', d)",
    "EXTRACT(year FROM ts)",
    "date_trunc('month', ts)",
    "datediff('day', d, d)",
    "time_bucket(INTERVAL '1 day', ts)",
    "like_escape(name, 'a!%', '!')",
    "name LIKE 'a!%' ESCAPE '!'",
    "array_length([1, 2], 1)",
    "array_length([1, 2])",
    "list_reduce([age], LAMBDA x, y: x + y, 0)",
    "repeat(name, 3)",
    "lpad(name, 10, '*')",
    "regexp_matches(name, '(' || name)",  # TRY catches a bad pattern from the data
    "regexp_extract(name, 'a(b)', 1)",
    "strftime(ts, '%Y')",
    "CAST(name AS INT) + age * 9223372036854775807",
    "epoch_ms(ts)",
])
def test_check_total_accepts(sql: str) -> None:
    check_total(parse(sql), types=TYPES)


def test_check_total_names_an_owners_expression() -> None:
    with pytest.raises(PartialFunctionError) as err:
        check_total(parse("timezone(zone, ts)"), what="The mask of column 'x' of table 'a.b'")
    assert str(err.value).startswith("The mask of column 'x' of table 'a.b': timezone() can")
    assert err.value.line is None


def test_duckdb_call_follows_sqlglot_to_the_function_duckdb_runs() -> None:
    name, args = duckdb_call(parse("EXTRACT(epoch FROM ts)"))  # type: ignore[misc]
    assert name == "date_part" and [a.sql("duckdb") for a in args] == ["'epoch'", "ts"]
    name, args = duckdb_call(parse("time_bucket(w, ts)"))  # type: ignore[misc]
    assert name == "time_bucket" and args[0].sql("duckdb") == "w"  # type: ignore[union-attr]
    assert duckdb_call(parse("a + b")) is None


# -- the table, measured again


def _probe_in_subprocess() -> dict[str, object]:
    """Run the probe in a child with a 6 GB address-space limit: an out-of-memory
    escape (repeat with a count of 10^9) then fails its allocation instead of
    taking the machine's memory."""
    code = ("import json\n"
            "from tests.totality_probe import probe\n"
            "r = probe()\n"
            "print(json.dumps({'escapes': [[e.function, e.position, list(e.signature), "
            "e.error, e.column, list(e.literals)] for e in r.sorted()], "
            "'never_ran': sorted(r.probed - r.ran), 'timeouts': r.timeouts, "
            "'fatal': len(r.fatal)}))\n")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, preexec_fn=limit, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


#: Functions the probe cannot call with its ordinary values (a constant JSON
#: structure, key-value pairs, a map, ...): not measured, known.
NEVER_RAN = ["cardinality", "from_json", "generate_subscripts", "position", "round_even"]


@pytest.mark.slow
def test_escapes_table_matches_duckdb() -> None:
    measured = _probe_in_subprocess()
    table = [[e.function, e.position, list(e.signature), e.error, e.column, list(e.literals)]
             for e in ESCAPES_TRY]
    assert measured["escapes"] == table, (
        "DuckDB's behaviour changed: regenerate the table with "
        "`python -m tests.totality_probe --table` and review each change")
    assert measured["never_ran"] == NEVER_RAN
    assert measured["timeouts"] == []


def test_every_escape_is_enforced_by_check_total() -> None:
    """Each (function, argument) of the table is refused with a column there, and
    each literal the probe saw fail is refused too."""
    for escape in ESCAPES_TRY:
        args = [f"CAST({v} AS {t})" if t != "LAMBDA" else v
                for t, v in zip(escape.signature, escape.ordinary, strict=True)]
        cast = f"CAST({{}} AS {escape.signature[escape.position]})"
        if escape.column and "ESCAPE" not in escape.function:  # sqlglot reads a string there
            args[escape.position] = cast.format("c")
            with pytest.raises(PartialFunctionError):
                check_total(parse(escape.template.format(*args)))
        for literal in escape.literals:
            args[escape.position] = cast.format(literal)
            if "ESCAPE" in escape.function:
                args[escape.position] = literal  # sqlglot reads only a string here
            try:
                node = parse(escape.template.format(*args))
            except sqlglot.ParseError:
                continue  # not SQL an analyst can send
            with pytest.raises(PartialFunctionError):
                check_total(node)


def test_every_escaping_function_says_how_to_write_it() -> None:
    from policy.totality import _ADVICE

    assert {e.function for e in ESCAPES_TRY} <= set(_ADVICE)


def test_every_time_zone_name_is_accepted() -> None:
    con = duckdb.connect()
    names = [r[0] for r in con.execute("SELECT name FROM pg_timezone_names()").fetchall()]
    assert "UTC" in names
    for name in names[::7] + ["utc", "europe/paris"]:
        quoted = name.replace("'", "''")
        check_total(parse(f"timezone('{quoted}', ts)"), types=TYPES)


# -- the rules, against DuckDB


def _engine_like() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET disabled_optimizers = '{','.join(DISABLED_OPTIMIZERS)}'")
    con.execute("SET enable_progress_bar = false")
    return con


#: Extreme values of each column type, for the comparisons kept unwrapped.
EXTREMES = {
    "TINYINT": ["-128", "127"], "SMALLINT": ["-32768", "32767"],
    "INTEGER": ["-2147483648", "2147483647"],
    "BIGINT": ["-9223372036854775808", "9223372036854775807"],
    "UTINYINT": ["0", "255"], "UBIGINT": ["0", "18446744073709551615"],
    "FLOAT": ["'nan'", "'inf'", "'-inf'", "3.4e38"],
    "DOUBLE": ["'nan'", "'inf'", "'-inf'", "1.7e308", "-1.7e308"],
    "DECIMAL(4,1)": ["-999.9", "999.9"],
    "DECIMAL(38,0)": ["-99999999999999999999999999999999999999",
                      "99999999999999999999999999999999999999"],
    "DECIMAL(38,10)": ["9999999999999999999999999999.9999999999"],
    "VARCHAR": ["''", "'CANARY-RARE-DIAG/987654'", "repeat('x', 10000)"],
    "BOOLEAN": ["true", "false"],
    "DATE": ["'infinity'", "'-infinity'", "'5877642-06-25'", "'5877642-06-25 (BC)'"],
    "TIMESTAMP": ["'infinity'", "'-infinity'", "'294247-01-10 04:00:54.775806'",
                  "'290309-12-22 (BC) 00:00:00'"],
    "TIMESTAMP WITH TIME ZONE": ["'infinity'", "'-infinity'", "'290309-12-22 (BC) 00:00:00'"],
    "INTERVAL": ["'2147483647 months'", "'-2147483648 days'"],
    "TIME": ["'24:00:00'", "'00:00:00'"],
}  # fmt: skip
LITERALS = ["0", "-1", "1.5", "-1.5", "1e300", "99999999999999999999999",
            "170141183460469231731687303715884105728", "1e-300", "'abc'", "'2020-01-01'",
            "'1'", "true", "NULL", "0.000000000000000000000000000000000001",
            "12345678901234567890.123456789", "9223372036854775807"]


@pytest.mark.parametrize("column_type", sorted(EXTREMES))
def test_comparisons_kept_or_rewritten_never_fail(column_type: str) -> None:
    """Every comparison of a column with a literal, as make_total writes it, runs
    on a column holding the type's extreme values (and fails as written when it
    was wrapped: the wrap is needed, so the test can fail)."""
    con = _engine_like()
    con.execute(f'CREATE TABLE t (c {column_type})')
    for value in [*EXTREMES[column_type], "NULL"]:
        con.execute(f"INSERT INTO t SELECT TRY(CAST({value} AS {column_type}))")
    kept = 0
    for literal in LITERALS:
        for op in ("=", "<", "<>", ">="):
            condition = make_total(parse(f"c {op} {literal}"), types={"c": column_type},
                                   predicate=True)
            sql = f"SELECT count(*) FROM t WHERE {condition.sql('duckdb')}"
            try:
                con.execute(sql + " LIMIT 0")
            except duckdb.Error:
                continue  # refused while binding: the same on any data
            con.execute(sql).fetchall()  # must not raise
            if not isinstance(condition, exp.Try):
                kept += 1
    assert kept > 0


@pytest.mark.parametrize("sql", [
    "CAST(v AS INTEGER) = 1 OR CAST(v AS INTEGER) = 2",
    "v IN (1, 2)",
    "CAST(v AS INTEGER) IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)",
    "array_to_string(CAST(v AS VARCHAR[]), ',') = 'x'",
])
def test_the_engine_optimizers_that_move_code_out_of_try_are_off(sql: str) -> None:
    """With DuckDB's default optimizers these escape TRY; as the engine runs them,
    they do not."""
    default = duckdb.connect()
    default.execute("CREATE TABLE t AS SELECT 'CANARY-RARE-DIAG/987654' AS v")
    with pytest.raises(duckdb.ConversionException, match="CANARY"):
        default.execute(f"SELECT TRY({sql}) FROM t").fetchall()
    engine = _engine_like()
    engine.execute("CREATE TABLE t AS SELECT 'CANARY-RARE-DIAG/987654' AS v")
    assert engine.execute(f"SELECT TRY({sql}) FROM t").fetchall() == [(None,)]


@pytest.mark.parametrize("sql", ["epoch_ns(v)", "epoch_us(v)"])
def test_the_engine_does_not_evaluate_functions_on_column_statistics(sql: str) -> None:
    """DuckDB's statistics propagation evaluates functions on a column's minimum and
    maximum while planning, outside TRY: with one row in year 5877642, the plan fails."""
    default = duckdb.connect()
    default.execute("CREATE TABLE t AS SELECT DATE '5877642-06-25' AS v")
    with pytest.raises(duckdb.ConversionException):
        default.execute(f"SELECT TRY({sql}) FROM t").fetchall()
    engine = _engine_like()
    engine.execute("CREATE TABLE t AS SELECT DATE '5877642-06-25' AS v")
    assert engine.execute(f"SELECT TRY({sql}) FROM t").fetchall() == [(None,)]


def test_the_engine_turns_those_optimizers_off(tmp_path: Path) -> None:
    from gateway.engine import Engine

    engine = Engine(tmp_path)
    engine.start()
    try:
        setting = engine.cursor().execute(
            "SELECT current_setting('disabled_optimizers')").fetchall()[0][0]
    finally:
        engine.close()
    assert set(setting.split(",")) >= set(DISABLED_OPTIMIZERS)
