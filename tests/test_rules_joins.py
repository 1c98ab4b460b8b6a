"""policy.rules.check_joins: join rules (``join_keys``) and the ways around them."""

from __future__ import annotations

import re

import pytest
from golden import SCHEMAS, hospital_policy, make_duckdb, principal_from

from gateway.errors import SqlError
from policy.loader import parse_policy
from policy.pipeline import plan_query
from policy.principal import Principal

POLICY = hospital_policy()
LINKER = principal_from("linker")
RULE = "Table 'registry.people' may only be joined on its join keys (pid), compared with '='"


def plan(sql: str) -> str:
    return plan_query(sql, policy=POLICY, principal=LINKER, schemas=SCHEMAS).sql


@pytest.mark.parametrize(
    "sql",
    [
        # ON, USING, NATURAL
        "SELECT p.name, v.cost FROM people p JOIN visits v ON p.zip = v.zip",
        "SELECT p.name, v.cost FROM people p JOIN visits v USING (zip)",
        "SELECT p.name, v.cost FROM people p NATURAL JOIN visits v",
        "SELECT p.name FROM people p LEFT JOIN visits v ON p.pid = v.pid AND p.zip = v.zip",
        "SELECT p.name FROM people p JOIN visits v ON p.pid = v.pid OR p.zip = v.zip",
        # WHERE, comma and cross joins
        "SELECT p.name, v.cost FROM people p, visits v WHERE p.zip = v.zip",
        "SELECT p.name, v.cost FROM people p CROSS JOIN visits v WHERE p.zip = v.zip",
        "SELECT p.name FROM people p CROSS JOIN visits v WHERE p.pid = v.pid AND p.zip = v.zip",
        "SELECT p.name FROM people p, visits v WHERE NOT (p.zip <> v.zip)",
        "SELECT p.name FROM people p, visits v WHERE p.zip LIKE v.zip",
        "SELECT p.name FROM people p, visits v WHERE starts_with(p.zip, v.zip)",
        "SELECT p.name FROM people p, visits v WHERE list_contains([v.zip], p.zip)",
        # only equality, even on the key
        "SELECT p.name FROM people p JOIN visits v ON p.pid < v.pid",
        "SELECT p.name FROM people p ASOF JOIN visits v ON p.pid >= v.pid",
        # subqueries
        "SELECT p.name FROM people p WHERE p.zip IN (SELECT zip FROM visits)",
        "SELECT p.name FROM people p WHERE EXISTS (SELECT 1 FROM visits v WHERE v.zip = p.zip)",
        "SELECT p.name FROM people p WHERE p.zip = (SELECT max(zip) FROM visits)",
        "SELECT (SELECT sum(cost) FROM visits v WHERE v.zip = p.zip) AS c FROM people p",
        "SELECT p.name FROM people p, LATERAL (SELECT cost FROM visits v WHERE v.zip = p.zip) l",
        "SELECT s.name FROM (SELECT upper(zip) AS k, name FROM people) s "
        "JOIN visits v ON s.k = upper(v.zip)",
        "SELECT s.name FROM (SELECT zip AS k, name FROM people) s, visits v WHERE s.k = v.zip",
        # CTEs, including a CTE joined to itself
        "WITH z AS (SELECT zip AS k, name FROM people) SELECT z.name FROM z JOIN visits v "
        "ON z.k = v.zip",
        "WITH c AS (SELECT zip FROM people) SELECT * FROM c c1 JOIN c c2 ON c1.zip = c2.zip",
        "WITH c AS (SELECT * FROM people) SELECT c.name FROM c JOIN visits v ON c.zip = v.zip",
        # self-joins, set operations, analyst-supplied rows
        "SELECT a.name FROM people a JOIN people b ON a.zip = b.zip",
        "SELECT zip FROM people INTERSECT SELECT zip FROM visits",
        "SELECT zip FROM people EXCEPT SELECT zip FROM visits",
        "SELECT p.name FROM people p JOIN (VALUES ('10001', 'x')) v(z, n) ON p.zip = v.z",
        "SELECT p.name FROM people p, UNNEST([p.zip]) u(z) JOIN visits v ON u.z = v.zip",
        # a comparison computed in one place and used in another
        "SELECT * FROM (SELECT p.zip = v.zip AS same, p.name FROM people p, visits v) WHERE same",
        "SELECT * FROM (SELECT p.zip || '|' || v.zip AS k, p.name FROM people p, visits v) "
        "WHERE split_part(k, '|', 1) = split_part(k, '|', 2)",
        "SELECT count(*) FILTER (WHERE p.zip = v.zip) AS n FROM people p, visits v",
        "SELECT sum(CASE WHEN p.zip = v.zip THEN 1 END) AS n FROM people p, visits v",
        "SELECT p.name FROM people p, visits v ORDER BY abs(p.birth_year - v.cost) LIMIT 1",
        "SELECT arg_min(v.cost, abs(p.birth_year - v.cost)) AS c FROM people p, visits v",
        "SELECT p.name FROM people p, visits v "
        "QUALIFY row_number() OVER (PARTITION BY p.name ORDER BY levenshtein(p.zip, v.zip)) = 1",
        # rows paired by position
        "SELECT p.name, v.cost FROM people p POSITIONAL JOIN visits v",
    ],
)
def test_joins_off_the_keys_are_refused(sql: str) -> None:
    with pytest.raises(SqlError, match=re.escape(RULE)):
        plan(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT p.name, v.cost FROM people p JOIN visits v ON p.pid = v.pid",
        "SELECT p.name, v.cost FROM people p JOIN visits v USING (pid)",
        "SELECT p.name, v.cost FROM people p, visits v WHERE p.pid = v.pid AND v.cost > 10",
        "SELECT p.name FROM people p WHERE p.pid IN (SELECT pid FROM visits)",
        "SELECT p.name FROM people p WHERE EXISTS (SELECT 1 FROM visits v WHERE v.pid = p.pid)",
        "WITH c AS (SELECT pid, name FROM people) SELECT c.name FROM c JOIN visits v "
        "ON c.pid = v.pid",
        "SELECT sum(v.cost * p.birth_year) AS s FROM people p JOIN visits v ON p.pid = v.pid",
        "SELECT p.name, v.cost FROM people p JOIN visits v ON p.pid = v.pid ORDER BY v.cost",
        "SELECT p.zip, count(*) AS n FROM people p JOIN visits v ON p.pid = v.pid GROUP BY p.zip",
        # no other relation: any column, any comparison
        "SELECT name FROM people WHERE zip = '10001' AND birth_year > 1970",
        "SELECT a.name FROM people a WHERE a.zip IN ('10001', '10002')",
        "SELECT p.name, v.cost FROM people p CROSS JOIN visits v",
        # a table without join_keys joins on anything
        "SELECT a.cost FROM visits a JOIN visits b ON a.zip = b.zip",
    ],
)
def test_key_joins_and_single_tables_are_allowed(sql: str) -> None:
    make_duckdb().execute(plan(sql)).fetchall()


def test_the_message_names_the_keys_and_the_place() -> None:
    with pytest.raises(SqlError) as err:
        plan("SELECT p.name\nFROM people p JOIN visits v ON p.zip = v.zip")
    assert str(err.value) == (
        f"{RULE}; 'p.zip = v.zip' relates its column 'zip' to another relation "
        "(line 2, column 34)"
    )


def test_no_join_keys_means_no_join_at_all() -> None:
    text = """
version: 1
domain: {name: d}
datasets:
  s:
    tables:
      a: {source: {format: csv, path: a.csv}, join_keys: []}
      b: {source: {format: csv, path: b.csv}}
roles:
  r: {datasets: {s: {mode: raw}}}
"""
    policy = parse_policy(text, base_dir="/")
    schemas = {("s", "a"): {"id": "INTEGER"}, ("s", "b"): {"id": "INTEGER"}}
    who = Principal("u", "r")
    plan_query("SELECT id FROM a WHERE id > 2", policy=policy, principal=who, schemas=schemas)
    with pytest.raises(SqlError, match=re.escape("Table 's.a' may not be joined to other")):
        plan_query(
            "SELECT a.id FROM a JOIN b ON a.id = b.id",
            policy=policy,
            principal=who,
            schemas=schemas,
        )


def test_tables_without_join_keys_are_untouched() -> None:
    sql = "SELECT s.age FROM screenings s JOIN patients p ON s.site = p.site"
    plan_query(sql, policy=POLICY, principal=principal_from("researcher"), schemas=SCHEMAS)
