"""The aggregate-mode attack corpus, at the planner level, on real data.

Person 60 (see ``test_rules_aggregate``) is alone in many ways: the only one aged
99, one of the two people at site 'east', with a result and a cost no one else
has. Each attack tries to learn something about them (or about any small
group). It must be refused with the right error class, or rewritten so that, run
on DuckDB, it returns exactly the raw answer without groups under the minimum
(three people) — and never the target's values.
"""

from __future__ import annotations

import duckdb
import pytest
from test_rules_aggregate import SECRET_COST, SECRET_RESULT, clinic_db, clinic_plan, rows

from gateway.errors import (
    ForbiddenFunctionError,
    NotSupportedError,
    SqlError,
    StockadeError,
    UnknownColumnError,
)
from policy.rules.enforce_aggregate import AggregateOnlyError

ROW = AggregateOnlyError
FORBIDDEN = ForbiddenFunctionError

REFUSED: list[tuple[str, type[StockadeError]]] = [
    # row-level output
    ("SELECT * FROM visits", ROW),
    ("SELECT site, age FROM visits", ROW),
    ("SELECT result FROM visits WHERE age = 99", ROW),
    ("SELECT site FROM visits LIMIT 1", ROW),
    ("SELECT DISTINCT ON (site) site, result FROM visits", ROW),
    ("SELECT a FROM (SELECT result AS a FROM visits) t GROUP BY a", ROW),
    ("WITH x AS (SELECT result FROM visits) SELECT result, count(*) AS n FROM x GROUP BY result",
     ROW),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site UNION ALL SELECT result, 1 FROM visits",
     ROW),
    ("SELECT result FROM visits GROUP BY ROLLUP (site)", ROW),
    ("SELECT grouping(result) AS g FROM visits GROUP BY site", ROW),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site ORDER BY cost", ROW),
    # window functions over rows
    ("SELECT site, count(*) OVER () AS n FROM visits", ROW),
    ("SELECT row_number() OVER (ORDER BY age) AS r FROM visits", ROW),
    ("SELECT sum(count(*)) OVER () AS n, result FROM visits", ROW),
    ("SELECT site, sum(cost) OVER (PARTITION BY site) AS s FROM visits GROUP BY site", ROW),
    ("SELECT count(*) AS n FROM visits QUALIFY row_number() OVER (ORDER BY age) = 1", ROW),
    # subqueries reading an aggregate-mode table at row level
    ("SELECT count(*) AS n FROM visits WHERE site IN (SELECT site FROM visits WHERE age = 99)",
     ROW),
    ("SELECT count(*) AS n FROM visits WHERE EXISTS (SELECT 1 FROM visits WHERE age = 99)", ROW),
    ("SELECT (SELECT result FROM visits WHERE age = 99) AS r", ROW),
    ("SELECT r.code, l.result FROM ref.regions r, "
     "LATERAL (SELECT v.result FROM visits v WHERE v.site = r.code) l", ROW),
    ("SELECT count(*) AS n FROM visits GROUP BY site, (SELECT name FROM people LIMIT 1)", ROW),
    ("SELECT code FROM ref.regions WHERE code IN (SELECT site FROM people WHERE name = 'P60')",
     ROW),
    # aggregates that show one person's value or list values
    ("SELECT min(cost) AS x FROM visits", FORBIDDEN),
    ("SELECT max(age) AS x FROM visits WHERE site = 'east'", FORBIDDEN),
    ("SELECT median(cost) AS x FROM visits", FORBIDDEN),
    ("SELECT quantile_cont(cost, 0.99) AS x FROM visits", FORBIDDEN),
    ("SELECT mode(result) AS x FROM visits", FORBIDDEN),
    ("SELECT list(result) AS x FROM visits", FORBIDDEN),
    ("SELECT array_agg(cost) AS x FROM visits", FORBIDDEN),
    ("SELECT string_agg(result, ',') AS x FROM visits", FORBIDDEN),
    ("SELECT histogram(result) AS x FROM visits", FORBIDDEN),
    ("SELECT first(result) AS x FROM visits", FORBIDDEN),
    ("SELECT last(result) AS x FROM visits", FORBIDDEN),
    ("SELECT any_value(result) AS x FROM visits", FORBIDDEN),
    ("SELECT arg_max(result, cost) AS x FROM visits", FORBIDDEN),
    ("SELECT min_by(result, age) AS x FROM visits", FORBIDDEN),
    ("SELECT bool_or(result = 'secret-x') AS x FROM visits", FORBIDDEN),
    ("SELECT unnest(list(result)) AS x FROM visits", FORBIDDEN),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site HAVING max(cost) > 700000",
     FORBIDDEN),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site ORDER BY max(cost)", FORBIDDEN),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY cost) AS x FROM visits", FORBIDDEN),
    # the privacy unit
    ("SELECT count(*) AS n FROM visits WHERE pid = 60", UnknownColumnError),
    ("SELECT pid, count(*) AS n FROM visits GROUP BY pid", UnknownColumnError),
    ("SELECT pid, count(*) AS n FROM people GROUP BY pid", ROW),
    ("SELECT count(*) AS n FROM people GROUP BY pid % 2", ROW),
    ("SELECT count(*) AS n FROM people WHERE pid = 60", ROW),
    ("SELECT sum(pid) AS n FROM people", ROW),
    ("SELECT site FROM people GROUP BY site "
     "HAVING sum(CASE WHEN pid = 60 THEN 1 ELSE 0 END) > 0", ROW),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site HAVING count(__stockade_unit) > 0",
     UnknownColumnError),  # like anywhere else: the name does not exist for the analyst
    ("SELECT count(*) AS n FROM people p JOIN people q ON p.pid = q.pid AND p.pid = 60", ROW),
    ("SELECT count(*) AS n FROM visits v WHERE EXISTS (SELECT 1 FROM people p WHERE p.pid = 60)",
     ROW),
    # the internal unit column and ways DuckDB could reach it late
    ("SELECT count(__stockade_unit) AS n FROM visits", UnknownColumnError),
    ("SELECT count(visits.__stockade_unit) AS n FROM visits", UnknownColumnError),
    ("SELECT count(*) AS __stockade_unit FROM visits", ROW),
    ("SELECT #1 FROM visits", ROW),
    ("SELECT count(#5) AS n FROM visits", ROW),
    ("SELECT {'a': *} AS s FROM visits", ROW),
    ("SELECT hash(*) AS h FROM visits", ROW),
    ("SELECT count(DISTINCT hash(*)) AS h FROM visits", ROW),
    ("SELECT * LIKE '%stockade%' FROM visits", ROW),
    ("SELECT count(*) AS n FROM visits v GROUP BY v", UnknownColumnError),
    # constructs the rule does not analyse
    ("SELECT count(*) AS n FROM visits USING SAMPLE 1", NotSupportedError),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site WINDOW w AS (ORDER BY site)",
     NotSupportedError),
    ("SELECT sum(cost ORDER BY age) AS s FROM visits", NotSupportedError),
    ("SELECT v.site, (SELECT count(*) FROM ref.regions r WHERE r.code = v.site) AS n "
     "FROM visits v GROUP BY v.site", NotSupportedError),
    ("SELECT * FROM visits PIVOT (count(*) FOR site IN ('east'))", NotSupportedError),
]


@pytest.mark.parametrize("sql,error", REFUSED, ids=[r[0][:70] for r in REFUSED])
def test_refused(sql: str, error: type[StockadeError]) -> None:
    with pytest.raises(error) as info:
        clinic_plan(sql)
    assert isinstance(info.value, SqlError | NotSupportedError)
    assert SECRET_RESULT not in str(info.value) or SECRET_RESULT in sql


EMPTY = "SELECT 1 WHERE false"

# (attack, the raw answer it may give: groups of at least 3 people only)
SAFE: list[tuple[str, str]] = [
    ("SELECT age, count(*) AS n FROM visits GROUP BY age HAVING count(*) = 2", EMPTY),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site HAVING count(*) = 1", EMPTY),
    ("SELECT site, count(*) AS n FROM visits WHERE age = 99 GROUP BY site", EMPTY),
    ("SELECT count(*) FILTER (WHERE age = 99) AS n FROM visits", EMPTY),
    ("SELECT sum(CASE WHEN age = 99 THEN cost END) AS s FROM visits", EMPTY),
    ("SELECT avg(cost) FILTER (WHERE site = 'east') AS a FROM visits", EMPTY),
    ("SELECT count_if(result = 'secret-x') AS n FROM visits", EMPTY),
    ("SELECT count(DISTINCT result) AS n FROM visits WHERE age = 99", EMPTY),
    ("SELECT stddev(cost) AS s FROM visits WHERE site = 'east'", EMPTY),
    ("SELECT cost, count(*) AS n FROM visits GROUP BY cost", EMPTY),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site "
     "HAVING count(*) FILTER (WHERE age = 99) > 0", EMPTY),
    ("SELECT count(*) AS n FROM visits v JOIN visits w ON v.age = w.age WHERE w.age = 99", EMPTY),
    ("WITH t AS (SELECT age, count(*) AS n FROM visits GROUP BY age) "
     "SELECT * FROM t WHERE age = 99", EMPTY),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site "
     "QUALIFY count(*) < 10 AND rank() OVER (ORDER BY count(*)) > 0", EMPTY),
    ("SELECT (SELECT count(*) FROM visits WHERE age = 99) AS n", "SELECT NULL"),
    ("SELECT result, count(*) AS n FROM visits GROUP BY result",
     "SELECT result, count(*) FROM clinic.visits GROUP BY result "
     "HAVING count(DISTINCT pid) >= 3"),
    # A HAVING that would fail on the suppressed group only: it never runs there, so the
    # query neither fails nor reveals that the group exists.
    ("SELECT result, count(*) AS n FROM visits GROUP BY result HAVING CAST(CASE WHEN "
     "result = 'secret-x' THEN 'x' ELSE '1' END AS INTEGER) = 1",
     "SELECT result, count(*) FROM clinic.visits GROUP BY result "
     "HAVING count(DISTINCT pid) >= 3"),
    ("SELECT DISTINCT result FROM visits",
     "SELECT DISTINCT result FROM clinic.visits WHERE result <> 'secret-x'"),
    ("SELECT age, count(*) AS n FROM visits GROUP BY age",
     "SELECT age, count(*) FROM clinic.visits WHERE age <> 99 GROUP BY age"),
    ("SELECT site, sum(cost) AS s FROM visits GROUP BY site",
     "SELECT site, sum(cost) FROM clinic.visits WHERE site <> 'east' GROUP BY site"),
    ("SELECT site, result, count(*) AS n FROM visits GROUP BY CUBE (site, result)",
     "SELECT site, result, count(*) FROM clinic.visits GROUP BY CUBE (site, result) "
     "HAVING count(DISTINCT pid) >= 3"),
    ("SELECT site, count(*) AS n FROM visits GROUP BY site ORDER BY n LIMIT 1",
     "SELECT 'south', 56"),
    ("SELECT site, count(*) AS n, rank() OVER (ORDER BY count(*)) AS r FROM visits "
     "GROUP BY site", "SELECT * FROM (VALUES ('south', 56, 1), ('north', 60, 2))"),
    ("SELECT r.code FROM ref.regions r "
     "WHERE (SELECT count(*) FROM visits v WHERE v.site = r.code) > 0",
     "SELECT * FROM (VALUES ('north'), ('south'))"),
    ("SELECT count(*) AS n FROM visits v NATURAL JOIN people p",
     "SELECT count(*) FROM clinic.visits v JOIN clinic.people p ON v.site = p.site "
     "HAVING count(DISTINCT v.pid) >= 3 AND count(DISTINCT p.pid) >= 3"),
    ("SELECT p.site, count(*) AS n FROM people p JOIN people q ON p.pid = q.pid "
     "GROUP BY p.site", "SELECT * FROM (VALUES ('north', 30), ('south', 28))"),
    ("SELECT l.a, count(*) AS n FROM visits v, LATERAL (SELECT v.age AS a) l GROUP BY l.a",
     "SELECT age, count(*) FROM clinic.visits WHERE age <> 99 GROUP BY age"),
    ("SELECT site, count(*) AS n FROM visits GROUP BY ALL",
     "SELECT * FROM (VALUES ('south', 56), ('north', 60))"),
]


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    return clinic_db()


@pytest.mark.parametrize("sql,raw", SAFE, ids=[s[0][:70] for s in SAFE])
def test_safe_rewrite(con: duckdb.DuckDBPyConnection, sql: str, raw: str) -> None:
    got = rows(con, clinic_plan(sql).sql)
    assert got == rows(con, raw)
    for row in got:
        for value in row:
            assert value != SECRET_COST and value != SECRET_RESULT


def test_corpus_size() -> None:
    assert len(REFUSED) + len(SAFE) >= 80


def test_differencing_is_not_stopped_by_a_threshold(con: duckdb.DuckDBPyConnection) -> None:
    """The documented limit (docs/policy.md): two released totals differ by a small group.

    Both queries pass the threshold; their difference is the number of visits of
    the two people at 'east'. Only ``dp`` mode bounds what such pairs reveal.
    """
    everyone = rows(con, clinic_plan("SELECT count(*) AS n FROM visits").sql)
    not_east = rows(con, clinic_plan("SELECT count(*) AS n FROM visits "
                                     "WHERE site <> 'east'").sql)
    assert everyone[0][0] - not_east[0][0] == 4
