"""policy.functions: the allow-list."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp

from policy.functions import function_name, is_allowed, missing_expression_names


def test_every_allowed_class_exists_in_sqlglot() -> None:
    assert missing_expression_names() == []


def call(sql: str) -> exp.Func:
    node = sqlglot.parse_one(f"SELECT {sql}", read="duckdb").expressions[0]
    assert isinstance(node, exp.Func), type(node)
    return node


@pytest.mark.parametrize(
    "sql",
    [
        "abs(x)", "round(x, 2)", "ln(x)", "sqrt(x)", "lower(s)", "upper(s)", "length(s)",
        "substr(s, 1, 2)", "left(s, 3)", "concat(a, b)", "regexp_matches(s, 'a')",
        "replace(s, 'a', 'b')", "trim(s)", "md5(s)", "sha256(s)", "hash(s)",
        "date_trunc('month', d)", "year(d)", "strftime(d, '%Y')", "date_part('year', d)",
        "coalesce(a, b)", "nullif(a, b)", "greatest(a, b)", "CAST(a AS INT)", "TRY_CAST(a AS INT)",
        "count(*)", "count(DISTINCT a)", "sum(a)", "avg(a)", "min(a)", "max(a)", "stddev(a)",
        "variance(a)", "median(a)", "quantile_cont(a, 0.5)", "approx_count_distinct(a)",
        "string_agg(a, ',')", "row_number() OVER ()", "rank() OVER (ORDER BY a)",
        "lag(a) OVER (ORDER BY a)", "CASE WHEN a THEN 1 END", "list_value(1, 2)",
    ],
)  # fmt: skip
def test_common_functions_are_allowed(sql: str) -> None:
    node = sqlglot.parse_one(f"SELECT {sql}", read="duckdb")
    bad = [function_name(f) for f in node.find_all(exp.Func) if not is_allowed(f)]
    assert bad == []


@pytest.mark.parametrize(
    "sql,name",
    [
        ("getenv('x')", "getenv"),
        ("current_setting('x')", "current_setting"),
        ("read_csv('x')", "read_csv"),
        ("read_parquet('x')", "read_parquet"),
        ("glob('*')", "glob"),
        ("query('SELECT 1')", "query"),
        ("duckdb_tables()", "duckdb_tables"),
        ("pragma_version()", "pragma_version"),
        ("version()", None),
        ("random()", None),
    ],
)
def test_dangerous_functions_are_refused(sql: str, name: str | None) -> None:
    node = call(sql)
    assert not is_allowed(node)
    if name:
        assert function_name(node) == name
