"""policy/rules/enforce_aggregate.py: aggregate-only access with suppressed small groups.

The planner runs on a small clinic policy (``min_group_size: 3``) and its rewrites
run on DuckDB over data where some groups are small on purpose: each result is
compared with the same query on the raw tables, keeping only the groups that
cover at least three distinct people.
"""

from __future__ import annotations

import re

import duckdb
import pytest
from sqlglot import exp, parse_one

from gateway.errors import ForbiddenFunctionError, NotSupportedError, StockadeError
from policy.access import catalog_for
from policy.loader import parse_policy
from policy.pipeline import QueryPlan, plan_query
from policy.principal import Principal
from policy.rules.apply_table_policy import apply_table_policy
from policy.rules.enforce_aggregate import UNIT_ALIAS, AggregateOnlyError, enforce_aggregate

CLINIC_POLICY = parse_policy(
    """
version: 1
domain: {name: clinic}
limits: {max_rows: 1000}
datasets:
  clinic:
    tables:
      visits:
        source: {format: csv, path: visits.csv}
        privacy_unit: pid
        columns: {pid: {hidden: true}}
      people:
        source: {format: csv, path: people.csv}
        privacy_unit: pid
  ref:
    tables:
      regions:
        source: {format: csv, path: regions.csv}
roles:
  auditor:
    datasets:
      clinic: {mode: aggregate, min_group_size: 3}
      ref: {mode: raw}
  reader:
    datasets:
      clinic: {mode: raw}
""",
    base_dir="/",
)

CLINIC_SCHEMAS = {
    ("clinic", "visits"): {"pid": "INTEGER", "site": "VARCHAR", "age": "INTEGER",
                           "result": "VARCHAR", "cost": "DOUBLE"},
    ("clinic", "people"): {"pid": "INTEGER", "name": "VARCHAR", "site": "VARCHAR"},
    ("ref", "regions"): {"code": "VARCHAR", "label": "VARCHAR"},
}

#: Person 60 is the target of the attacks: the only one at site 'east' with
#: person 59, the only one aged 99, with a result and a cost nobody else has.
SECRET_RESULT = "secret-x"
SECRET_COST = 777777.0

CLINIC_DATA = f"""
CREATE SCHEMA clinic; CREATE SCHEMA ref;
CREATE TABLE clinic.people AS
  SELECT range AS pid, 'P' || range AS name,
         CASE WHEN range <= 30 THEN 'north' WHEN range <= 58 THEN 'south' ELSE 'east' END AS site
  FROM range(1, 61);
CREATE TABLE clinic.visits AS
  SELECT p.pid, p.site,
         CASE WHEN p.pid = 60 THEN 99 ELSE 20 + (p.pid % 5) * 10 END AS age,
         CASE WHEN p.pid = 60 THEN '{SECRET_RESULT}' WHEN p.pid % 7 = 0 THEN 'pos'
              ELSE 'neg' END AS result,
         CASE WHEN p.pid = 60 THEN {SECRET_COST} ELSE p.pid * 10.0 + v.range END AS cost
  FROM clinic.people p, range(2) v;
CREATE TABLE ref.regions AS SELECT * FROM (VALUES ('north', 'Northern'), ('south', 'Southern'),
  ('east', 'Eastern')) AS v(code, label);
"""

AUDITOR = Principal("aud", "auditor")


def clinic_db() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute(CLINIC_DATA)
    return con


def clinic_plan(sql: str, principal: Principal = AUDITOR) -> QueryPlan:
    return plan_query(sql, policy=CLINIC_POLICY, principal=principal, schemas=CLINIC_SCHEMAS)


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]]:
    return sorted(con.execute(sql).fetchall(), key=repr)


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    return clinic_db()


# (analyst query, the same question on the raw tables with the threshold by hand)
MATCHES_RAW = [
    ("SELECT site, count(*) AS n FROM visits GROUP BY site",
     "SELECT site, count(*) FROM clinic.visits GROUP BY site HAVING count(DISTINCT pid) >= 3"),
    ("SELECT count(*) AS n, avg(cost) AS c FROM visits",
     "SELECT count(*), avg(cost) FROM clinic.visits"),
    ("SELECT age, count(*) AS n FROM visits GROUP BY age",
     "SELECT age, count(*) FROM clinic.visits GROUP BY age HAVING count(DISTINCT pid) >= 3"),
    ("SELECT site, age, count(*) AS n FROM visits GROUP BY site, age",
     "SELECT site, age, count(*) FROM clinic.visits GROUP BY site, age "
     "HAVING count(DISTINCT pid) >= 3"),
    ("SELECT DISTINCT site FROM visits",
     "SELECT site FROM clinic.visits GROUP BY site HAVING count(DISTINCT pid) >= 3"),
    ("SELECT site, result, count(*) AS n FROM visits GROUP BY ALL",
     "SELECT site, result, count(*) FROM clinic.visits GROUP BY site, result "
     "HAVING count(DISTINCT pid) >= 3"),
    ("SELECT site, count(*) FILTER (WHERE result = 'pos') AS pos FROM visits GROUP BY site",
     "SELECT site, count(*) FILTER (WHERE result = 'pos') FROM clinic.visits GROUP BY site "
     "HAVING count(DISTINCT pid) >= 3 AND count(DISTINCT pid) FILTER (WHERE result = 'pos') >= 3"),
    ("SELECT site, result, count(*) AS n FROM visits GROUP BY ROLLUP (site, result)",
     "SELECT site, result, count(*) FROM clinic.visits GROUP BY ROLLUP (site, result) "
     "HAVING count(DISTINCT pid) >= 3"),
    ("SELECT site, count(*) AS n, sum(count(*)) OVER () AS total FROM visits GROUP BY site",
     "SELECT site, n, sum(n) OVER () FROM (SELECT site, count(*) AS n FROM clinic.visits "
     "GROUP BY site HAVING count(DISTINCT pid) >= 3)"),
    ("SELECT r.label, count(*) AS n FROM visits v JOIN ref.regions r ON r.code = v.site "
     "GROUP BY r.label",
     "SELECT r.label, count(*) FROM clinic.visits v JOIN ref.regions r ON r.code = v.site "
     "GROUP BY r.label HAVING count(DISTINCT v.pid) >= 3"),
    ("SELECT p.site, count(*) AS n FROM visits v JOIN people p ON p.site = v.site "
     "AND p.name = 'P' || CAST(v.age AS VARCHAR) GROUP BY p.site",
     "SELECT p.site, count(*) FROM clinic.visits v JOIN clinic.people p ON p.site = v.site "
     "AND p.name = 'P' || CAST(v.age AS VARCHAR) GROUP BY p.site "
     "HAVING count(DISTINCT v.pid) >= 3 AND count(DISTINCT p.pid) >= 3"),
    ("SELECT count(DISTINCT pid) AS people FROM people",
     "SELECT count(DISTINCT pid) FROM clinic.people"),
    ("WITH s AS (SELECT site, count(*) AS n FROM visits GROUP BY site) "
     "SELECT sum(n) AS total FROM s",
     "SELECT sum(n) FROM (SELECT site, count(*) AS n FROM clinic.visits GROUP BY site "
     "HAVING count(DISTINCT pid) >= 3)"),
    ("SELECT r.code, (SELECT count(*) FROM visits v WHERE v.site = r.code) AS n "
     "FROM ref.regions r",
     "SELECT r.code, (SELECT count(*) FROM clinic.visits v WHERE v.site = r.code "
     "HAVING count(DISTINCT v.pid) >= 3) FROM ref.regions r"),
    ("SELECT age, count(*) AS n FROM visits GROUP BY age ORDER BY n DESC, age LIMIT 2",
     "SELECT age, count(*) AS n FROM clinic.visits GROUP BY age "
     "HAVING count(DISTINCT pid) >= 3 ORDER BY n DESC, age LIMIT 2"),
    ("SELECT site, count_if(age > 40) AS old FROM visits GROUP BY site",
     "SELECT site, count_if(age > 40) FROM clinic.visits GROUP BY site "
     "HAVING count(DISTINCT pid) >= 3 AND count(DISTINCT pid) FILTER (WHERE age > 40) >= 3"),
]


@pytest.mark.parametrize("sql,raw", MATCHES_RAW, ids=[m[0][:60] for m in MATCHES_RAW])
def test_results_are_the_raw_answer_without_small_groups(
    con: duckdb.DuckDBPyConnection, sql: str, raw: str
) -> None:
    got = rows(con, clinic_plan(sql).sql)
    want = rows(con, raw)
    assert got == want


def test_small_groups_really_exist_in_the_test_data(con: duckdb.DuckDBPyConnection) -> None:
    # Otherwise the comparisons above would prove nothing about suppression.
    small = con.execute("SELECT count(*) FROM (SELECT site FROM clinic.visits GROUP BY site "
                        "HAVING count(DISTINCT pid) < 3)").fetchone()
    assert small == (1,)
    assert ("east",) not in rows(con, clinic_plan("SELECT site FROM visits GROUP BY site").sql)


def test_row_level_select_is_refused_with_the_message() -> None:
    with pytest.raises(AggregateOnlyError, match=re.escape(
        "Table 'clinic.visits' is in 'aggregate' mode for your role: every output column must "
        "be an aggregate (COUNT, SUM, AVG, …) or a GROUP BY key; groups covering fewer than 3 "
        "people are suppressed (line 1, column 8)"
    )):
        clinic_plan("SELECT site, age FROM visits")


def test_error_is_an_invalid_argument() -> None:
    assert AggregateOnlyError.status == "invalid_argument"
    assert issubclass(AggregateOnlyError, ValueError)


@pytest.mark.parametrize("function", ["min", "max", "median", "mode", "list", "string_agg",
                                      "first", "any_value", "histogram", "bool_or"])
def test_row_revealing_aggregates_are_refused(function: str) -> None:
    with pytest.raises(ForbiddenFunctionError, match="Aggregate '.*' is not allowed"):
        clinic_plan(f"SELECT site, {function}(result) AS x FROM visits GROUP BY site")


@pytest.mark.parametrize("function", ["count", "sum", "avg", "stddev", "var_pop", "mean",
                                      "stddev_samp", "kurtosis", "skewness", "sem"])
def test_counts_and_moments_are_allowed(con: duckdb.DuckDBPyConnection, function: str) -> None:
    got = rows(con, clinic_plan(f"SELECT site, {function}(cost) AS x FROM visits "
                                "GROUP BY site").sql)
    assert [r[0] for r in got] == ["north", "south"]


def test_aggregates_over_keys_and_raw_tables_are_still_checked() -> None:
    # MIN over a joined raw column would show a person's join key all the same.
    with pytest.raises(ForbiddenFunctionError):
        clinic_plan("SELECT max(r.label) AS x FROM visits v JOIN ref.regions r ON r.code = v.site")


def test_privacy_unit_is_grouped_counted_or_joined_only() -> None:
    with pytest.raises(AggregateOnlyError, match="grouping by it would make one group per"):
        clinic_plan("SELECT pid, count(*) AS n FROM people GROUP BY pid")
    with pytest.raises(AggregateOnlyError, match="a condition on it singles out people"):
        clinic_plan("SELECT count(*) AS n FROM people WHERE pid = 60")
    plan = clinic_plan("SELECT count(DISTINCT p.pid) AS n FROM people p JOIN people q "
                       "ON p.pid = q.pid")
    assert "COUNT(DISTINCT \"p\".\"pid\")" in plan.sql


def test_threshold_is_in_having_and_runs_before_the_analysts_condition() -> None:
    # A CASE, not AND: the analyst's condition never runs on a suppressed group (a
    # condition that fails on a group would otherwise reveal that the group exists).
    sql = clinic_plan("SELECT age, count(*) AS n FROM visits GROUP BY age "
                      "HAVING count(*) = 2").sql
    assert (f'HAVING CASE WHEN COUNT(DISTINCT "visits"."{UNIT_ALIAS}") >= 3 '
            f'THEN (COUNT(*) = 2) ELSE FALSE END') in sql


def test_unit_is_exposed_only_under_the_internal_alias() -> None:
    sql = clinic_plan("SELECT count(*) AS n FROM visits").sql
    assert f'"visits"."pid" AS "{UNIT_ALIAS}"' in sql
    assert sql.count('"pid"') == 1


def test_raw_mode_queries_are_untouched() -> None:
    expression = parse_one("SELECT site FROM clinic.visits AS visits", read="duckdb")
    catalog = catalog_for(CLINIC_POLICY, Principal("r", "reader"))
    assert enforce_aggregate(expression.copy(), catalog=catalog) == expression
    assert UNIT_ALIAS not in clinic_plan("SELECT site FROM visits", Principal("r", "reader")).sql


def test_rewrite_refuses_an_aggregate_table_the_rule_did_not_check() -> None:
    expression = parse_one("SELECT count(*) FROM clinic.visits AS visits", read="duckdb")
    with pytest.raises(StockadeError, match="without its aggregate-mode check"):
        apply_table_policy(expression, principal=AUDITOR,
                           catalog=catalog_for(CLINIC_POLICY, AUDITOR), schemas=CLINIC_SCHEMAS)


def test_rule_marks_every_block_table() -> None:
    catalog = catalog_for(CLINIC_POLICY, AUDITOR)
    expression = parse_one(
        "SELECT v.site, count(*) AS n FROM clinic.visits AS v GROUP BY v.site", read="duckdb"
    )
    out = enforce_aggregate(expression, catalog=catalog)
    assert all(t.meta.get("stockade_unit") for t in out.find_all(exp.Table))
    assert out.args["having"] is not None


def test_unsupported_clauses_are_named() -> None:
    with pytest.raises(NotSupportedError, match="SAMPLE"):
        clinic_plan("SELECT count(*) AS n FROM visits USING SAMPLE 10")
