"""Request limits and parameters without a server: parse limits, deadlines, binding."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
import sqlglot

from gateway.errors import InputError, QueryTimeoutError, SqlError, SqlSyntaxError
from gateway.limits import Deadline, RequestLimits
from gateway.lru import LruCache
from gateway.parameters import Parameters, bind, expected_parameters
from gateway.settings import load_settings
from network.config import load_config_text
from policy.loader import parse_policy
from policy.pipeline import plan_query
from policy.principal import Principal
from policy.rules.parse import parse

POLICY = parse_policy("""
version: 1
domain: {name: d}
datasets:
  s:
    tables:
      t: {source: {format: csv, path: t.csv}}
roles:
  reader: {datasets: {s: {mode: raw}}}
""", base_dir="/")
SCHEMAS = {("s", "t"): {"a": "INTEGER", "b": "VARCHAR"}}
READER = Principal("u", "reader", {})


# ---- parse: size and shape ------------------------------------------------------------------

def test_depth_is_refused_where_it_is_exceeded() -> None:
    sql = "SELECT a FROM t WHERE\n" + " AND ".join(f"a > {i}" for i in range(30))
    with pytest.raises(SqlError) as info:
        parse(sql, limits=RequestLimits(max_query_depth=20))
    assert "nest more than 20 levels deep" in str(info.value)
    assert info.value.line == 2
    assert parse(sql, limits=RequestLimits(max_query_depth=40)) is not None


def test_nodes_and_bytes_are_refused() -> None:
    sql = "SELECT " + ", ".join(f"a + {i}" for i in range(50)) + " FROM t"
    with pytest.raises(SqlError, match="more than 100 expression nodes"):
        parse(sql, limits=RequestLimits(max_query_nodes=100))
    with pytest.raises(InputError, match=f"The query is {len(sql)} bytes long"):
        parse(sql, limits=RequestLimits(max_query_bytes=len(sql) - 1))
    parse(sql, limits=RequestLimits(max_query_bytes=len(sql)))
    # bytes, not characters
    with pytest.raises(InputError, match="The query is 11 bytes long"):
        parse("SELECT 'é'", limits=RequestLimits(max_query_bytes=10))


def test_text_too_deep_for_the_parser_is_a_syntax_error() -> None:
    with pytest.raises(SqlSyntaxError, match="nests parentheses, functions or operators too "
                                             "deeply to be read"):
        parse("SELECT " + "abs(" * 300 + "1" + ")" * 300)


@pytest.mark.parametrize(("dialect", "sql", "keys"), [
    ("duckdb", "SELECT * FROM t WHERE a > $min_age AND b = :site", ["min_age", "site"]),
    ("postgres", "SELECT * FROM t WHERE a > $1 AND b = $2", ["1", "2"]),
    ("tsql", "SELECT * FROM t WHERE a > @min_age", ["min_age"]),
    ("duckdb", "SELECT * FROM t WHERE a > ? AND b = ?", [None, None]),
])
def test_every_spelling_of_a_parameter_is_a_placeholder(dialect: str, sql: str,
                                                        keys: list[str | None]) -> None:
    tree = parse(sql, dialect=dialect)
    assert [p.this for p in tree.find_all(sqlglot.exp.Placeholder)] == keys


# ---- the deadline covers planning -----------------------------------------------------------

def test_planning_stops_at_the_deadline() -> None:
    sql = "SELECT a FROM s.t WHERE a > 1"
    assert plan_query(sql, policy=POLICY, principal=READER, schemas=SCHEMAS,
                      deadline=Deadline(60)).parameter_count == 0
    with pytest.raises(QueryTimeoutError, match="Query stopped after 0.5 s, the time limit "
                                                "for your role"):
        expired = Deadline(0.5)
        time.sleep(0.6)
        plan_query(sql, policy=POLICY, principal=READER, schemas=SCHEMAS, deadline=expired)


def test_deadline_hands_out_what_is_left() -> None:
    deadline = Deadline(10)
    left = deadline.timeout()
    assert left is not None and 9 < left <= 10
    assert Deadline(None).timeout() is None
    with pytest.raises(QueryTimeoutError):
        Deadline(-1).timeout()


# ---- binding parameters -----------------------------------------------------------------------

def _query(sql: str) -> sqlglot.exp.Expr:
    return parse(sql)


@pytest.mark.parametrize(("sql", "given", "message"), [
    ("SELECT ? + ?", [1], "The query takes 2 parameters (?, ?) but 1 value was bound"),
    ("SELECT $1 + $2", [1, 2, 3], "The query takes 2 parameters ($1, $2) but 3 values were"),
    ("SELECT 1", [1], "The query takes no parameters, but 1 value was bound"),
    ("SELECT $a + ?", [1, 2], "mixes named ($name) and positional (?, $1) parameters"),
    ("SELECT $a + $b", {"a": 1}, "Parameter $b has no value: bind a value named 'b'"),
    ("SELECT $a", {"a": 1, "z": 2}, "Parameter 'z' is not in the query (its parameters are $a)"),
])
def test_binding_refuses_what_does_not_fit(sql: str, given: object, message: str) -> None:
    with pytest.raises(InputError) as info:
        bind(_query(sql), Parameters.of(given), required=True)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_binding_by_name_position_and_rows() -> None:
    named = _query("SELECT $b - $a, $a")
    assert expected_parameters(named) == ("named", ["b", "a"])
    rows = Parameters.of(pa.record_batch({":a": [1, 2], "$b": [10, 20]}))
    assert bind(named, rows, required=True) == [{"b": 10, "a": 1}, {"b": 20, "a": 2}]
    positional = _query("SELECT $2 - $1")
    assert bind(positional, Parameters.of([5, 7]), required=True) == [[5, 7]]
    # Describing a statement binds what is missing to NULL; running it refuses.
    assert bind(named, None, required=False) == [{"b": None, "a": None}]
    with pytest.raises(InputError, match=r"Parameter \$b has no value: the query takes 2 "
                                         r"parameters \(\$b, \$a\)"):
        bind(named, None, required=True)
    assert bind(_query("SELECT 1"), None, required=True) == [[]]


# ---- bounded caches and settings ----------------------------------------------------------------

def test_cache_bounded_by_bytes() -> None:
    cache: LruCache[str, bytes] = LruCache(100, max_bytes=10, weigh=len)
    for key in "abcd":
        cache.put(key, b"xxxx")
    assert [cache.get(k) is not None for k in "abcd"] == [False, False, True, True]
    assert cache.weight == 8
    assert cache.pop("c") == b"xxxx" and cache.weight == 4


def test_request_limits_are_settings() -> None:
    settings = load_settings({"policy": "p.yaml", "data_dir": "/tmp/x"},
                             env={"STOCKADE_MAX_QUERY_BYTES": "5000",
                                  "STOCKADE_MAX_PARAMETER_ROWS": "7"})
    assert settings.request_limits == RequestLimits(max_query_bytes=5000, max_parameter_rows=7)
    assert load_settings({"policy": "p", "data_dir": "d"}, env={}).request_limits \
        == RequestLimits()
    config = load_config_text("version: 1\nnetwork: {name: n}\n"
                              "domains: [{name: a, url: 'grpc://127.0.0.1:1'}]\n"
                              "settings: {max_query_depth: 50}\n")
    assert config.settings.request_limits == RequestLimits(max_query_depth=50)
