"""The federated planner: the query each domain answers, and what it refuses (and why)."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import sqlglot

from gateway.errors import (
    ForbiddenFunctionError,
    InputError,
    NotSupportedError,
    RefusedStatementError,
    SqlError,
    SqlSyntaxError,
)
from network import federate, federate_merge, federate_noise, federate_split
from network.federate import FederatedPlan, plan_federated
from tests.golden import load_cases, normalise

GOLDEN = Path(__file__).parent / "golden" / "federate" / "split.sql"
CASES = load_cases(GOLDEN)
T = "federated.oncology.screenings"
MUST_AGGREGATE = "Federated queries must aggregate"


@pytest.mark.parametrize("case", CASES, ids=[c.title for c in CASES])
def test_domain_sql_matches_the_golden_file(case):  # type: ignore[no-untyped-def]
    plan = plan_federated(case.input, dialect=case.headers.get("dialect"))
    assert normalise(plan.domain_sql) == normalise(case.expected)


def test_the_golden_file_has_cases() -> None:
    assert len(CASES) >= 12


def test_plan_names_the_dataset_table_and_columns() -> None:
    plan = plan_federated(
        f"SELECT EXTRACT(year FROM f.screened_on) AS y, AVG(f.Age), MAX(tumor_size_mm) "
        f"FROM {T} AS f WHERE site <> 'x' AND age > 3 GROUP BY y")
    assert isinstance(plan, FederatedPlan)
    assert (plan.dataset, plan.table) == ("oncology", "screenings")
    assert plan.columns == ("screened_on", "Age", "tumor_size_mm", "site")
    assert plan.names == ("y", "avg(f.Age)", "max(tumor_size_mm)", "domain_count")


def test_domain_sql_is_duckdb_without_comments_or_catalog() -> None:
    plan = plan_federated(f"/* epsilon: 0.5 */ SELECT COUNT(*) FROM {T} -- trailing\n")
    assert plan.domain_sql == "SELECT COUNT(*) AS __p0 FROM oncology.screenings"


def test_a_parsed_tree_is_accepted_and_left_unchanged() -> None:
    tree = sqlglot.parse_one(f"SELECT site, SUM(age) FROM {T} GROUP BY site", read="duckdb")
    before = tree.sql("duckdb")
    plan = plan_federated(tree)
    assert plan.domain_sql.startswith("SELECT site AS __g0, SUM(age) AS __p0")
    assert tree.sql("duckdb") == before


def test_quoted_identifiers_keep_their_quotes() -> None:
    plan = plan_federated('SELECT "Site Name", COUNT(*) FROM federated."On Co"."T 1" '
                          'GROUP BY "Site Name"')
    assert (plan.dataset, plan.table, plan.columns) == ("On Co", "T 1", ("Site Name",))
    assert plan.domain_sql == ('SELECT "Site Name" AS __g0, COUNT(*) AS __p0 FROM "On Co"."T 1" '
                               'GROUP BY "Site Name"')


def test_the_same_aggregate_twice_is_one_part() -> None:
    plan = plan_federated(f"SELECT SUM(age) AS a, sum(AGE) AS b, SUM(f.age) + 1 AS c "
                          f"FROM {T} AS f")
    assert plan.domain_sql == "SELECT SUM(age) AS __p0 FROM oncology.screenings AS f"


def test_output_names_follow_duckdb() -> None:
    plan = plan_federated(f"SELECT site, COUNT(*), SUM(age) / COUNT(*), STDDEV(age) FROM {T} "
                          "GROUP BY site")
    assert plan.names == ("site", "count_star()", "(sum(age) / count_star())", "stddev(age)",
                          "domain_count")


REFUSED = [
    (f"SELECT COUNT(DISTINCT site) FROM {T}", NotSupportedError,
     "COUNT(DISTINCT …) cannot be merged across domains: the same value may occur in several "
     "domains", (1, 8)),
    (f"SELECT SUM(DISTINCT age) FROM {T}", NotSupportedError,
     "SUM(DISTINCT …) cannot be merged across domains", (1, 8)),
    (f"SELECT site, MEDIAN(age) FROM {T} GROUP BY site", NotSupportedError,
     "MEDIAN cannot be merged across domains: medians, quantiles and modes need every row in "
     "one place", (1, 14)),
    (f"SELECT QUANTILE_CONT(age, 0.9) FROM {T}", NotSupportedError,
     "cannot be merged across domains: medians, quantiles and modes", None),
    (f"SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY age) FROM {T}", NotSupportedError,
     "cannot be merged across domains: medians, quantiles and modes", None),
    (f"SELECT MODE(site) FROM {T}", NotSupportedError,
     "MODE cannot be merged across domains", (1, 8)),
    (f"SELECT site, COUNT(*) OVER () FROM {T}", NotSupportedError,
     "Window functions (… OVER …) cannot be merged across domains", (1, 14)),
    (f"SELECT site, RANK() OVER (ORDER BY site) FROM {T} GROUP BY site", NotSupportedError,
     "Window functions", None),
    (f"SELECT COUNT(*) FROM {T} QUALIFY 1 = 1", NotSupportedError,
     "Window functions and QUALIFY cannot be merged", None),
    (f"SELECT COUNT(*) FROM {T} a JOIN federated.oncology.patients b ON a.id = b.id",
     NotSupportedError, "Federated queries read one table; joins are not supported", None),
    (f"SELECT COUNT(*) FROM {T} UNION ALL SELECT COUNT(*) FROM {T}", NotSupportedError,
     "UNION, INTERSECT and EXCEPT are not supported in federated queries", None),
    (f"WITH s AS (SELECT * FROM {T}) SELECT COUNT(*) FROM s", NotSupportedError,
     "WITH (common table expressions) is not supported in federated queries", None),
    (f"SELECT COUNT(*) FROM (SELECT age FROM {T})", NotSupportedError,
     "Subqueries are not supported in federated queries", None),
    (f"SELECT COUNT(*) FROM {T} WHERE age > (SELECT AVG(age) FROM {T})", NotSupportedError,
     "Subqueries are not supported in federated queries", None),
    (f"SELECT COUNT(*) FROM {T} WHERE site IN (SELECT site FROM federated.oncology.sites)",
     NotSupportedError, "Subqueries are not supported", None),
    (f"SELECT * FROM {T}", NotSupportedError,
     f"{MUST_AGGREGATE}: SELECT * returns rows, which are not merged across domains", (1, 8)),
    (f"SELECT f.* FROM {T} AS f", NotSupportedError, f"{MUST_AGGREGATE}: SELECT *", None),
    (f"SELECT site, age FROM {T}", NotSupportedError,
     f"{MUST_AGGREGATE}: this query returns rows", (1, 8)),
    (f"SELECT 1 AS one FROM {T}", NotSupportedError, f"{MUST_AGGREGATE}: this query", None),
    (f"SELECT site, COUNT(*) FROM {T}", NotSupportedError,
     f"{MUST_AGGREGATE}: column 'site' is neither a GROUP BY key nor inside an aggregate. "
     "Add it to GROUP BY or aggregate it", (1, 8)),
    (f"SELECT site, age, COUNT(*) FROM {T} GROUP BY site", NotSupportedError,
     f"{MUST_AGGREGATE}: column 'age' is neither", (1, 14)),
    (f"SELECT site, COUNT(*) FROM {T} GROUP BY site HAVING age > 2", NotSupportedError,
     f"{MUST_AGGREGATE}: column 'age'", None),
    (f"SELECT COUNT(*) FROM {T} ORDER BY age", NotSupportedError,
     f"{MUST_AGGREGATE}: column 'age'", None),
    (f"SELECT DISTINCT site FROM {T}", NotSupportedError,
     "SELECT DISTINCT is not supported in federated queries; GROUP BY the columns instead",
     None),
    (f"SELECT site, COUNT(*) FROM {T} GROUP BY ROLLUP (site)", NotSupportedError,
     "ROLLUP, CUBE and GROUPING SETS are not supported", None),
    (f"SELECT entropy(site) FROM {T}", NotSupportedError,
     "Aggregate ENTROPY cannot be merged across domains. Federated queries support COUNT(*), "
     "COUNT, SUM, AVG, MIN, MAX", (1, 8)),
    (f"SELECT COUNT_IF(age > 3) FROM {T}", NotSupportedError,
     "Aggregate COUNT_IF cannot be merged", None),
    (f"SELECT ANY_VALUE(site) FROM {T}", NotSupportedError,
     "Aggregate ANY_VALUE cannot be merged", None),
    (f"SELECT COUNT(*) FILTER (WHERE age > 3) FROM {T}", NotSupportedError,
     "Aggregates with FILTER (WHERE …) are not supported in federated queries; put the "
     "condition in WHERE", None),
    (f"SELECT MIN(age, 3) FROM {T}", NotSupportedError,
     "MIN takes one argument in a federated query", None),
    (f"SELECT COUNT(*) FROM {T} TABLESAMPLE 10%", NotSupportedError,
     "SAMPLE on the table is not supported", None),
    (f"SELECT SUM(COUNT(*)) FROM {T}", SqlError, "SUM contains another aggregate", (1, 8)),
    (f"SELECT COUNT(*) FROM {T} WHERE COUNT(*) > 1", SqlError,
     "Aggregates are not allowed in WHERE; use HAVING", None),
    (f"SELECT site FROM {T} GROUP BY 3", SqlError,
     "GROUP BY 3 is not a position in the select list (1 to 1)", None),
    (f"SELECT COUNT(*) FROM {T} ORDER BY 2", SqlError,
     "ORDER BY 2 is not a position in the select list (1 to 1)", None),
    (f"SELECT COUNT(*) * random() FROM {T}", ForbiddenFunctionError,
     "Function 'random' is not allowed in SELECT", (1, 19)),
    (f"SELECT COUNT(*) AS domain_count FROM {T}", InputError,
     "The output name 'domain_count' is taken", None),
    (f"SELECT COUNT(*) AS __n FROM {T}", InputError,
     "Output names starting with '__' are reserved", None),
    ("SELECT COUNT(*) FROM oncology.screenings", InputError,
     "A federated query reads federated.DATASET.TABLE, not 'oncology.screenings'", None),
    ("SELECT COUNT(*) FROM st_marys.oncology.screenings", InputError,
     "not 'st_marys.oncology.screenings'", None),
    ("SELECT COUNT(*) FROM read_csv('x')", InputError,
     "A federated query reads one table, FROM federated.DATASET.TABLE", None),
    (f"INSERT INTO {T} VALUES (1)", RefusedStatementError,
     "A federated query must be one SELECT statement", None),
    (f"SELECT COUNT(*) FORM {T}", SqlSyntaxError, "Unexpected token", (1, 30)),
]


@pytest.mark.parametrize("sql, error, reason, where", REFUSED, ids=[r[0] for r in REFUSED])
def test_refusals_name_the_reason(sql, error, reason, where):  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=re.escape(reason)) as info:
        plan_federated(sql)
    if where is not None:
        assert str(info.value).endswith(f"(line {where[0]}, column {where[1]})")


def test_refusals_are_input_errors() -> None:
    """Every refusal becomes Flight INVALID_ARGUMENT, never an internal error."""
    for sql, *_ in REFUSED:
        with pytest.raises(InputError):
            plan_federated(sql)


def test_group_by_alias_reads_the_output_alias() -> None:
    plan = plan_federated(f"SELECT age + 1 AS age, COUNT(*) FROM {T} GROUP BY age")
    assert plan.domain_sql.endswith("GROUP BY age + 1")


def test_having_and_order_by_may_use_output_aliases() -> None:
    plan = plan_federated(f"SELECT site AS s, COUNT(*) AS n FROM {T} GROUP BY s "
                          "HAVING n > 2 ORDER BY n DESC, s LIMIT 5 OFFSET 1")
    assert plan.domain_sql == ("SELECT site AS __g0, COUNT(*) AS __p0 FROM oncology.screenings "
                               "GROUP BY site")


@pytest.mark.parametrize("module", [federate, federate_merge, federate_noise, federate_split],
                         ids=lambda m: m.__name__)
def test_the_examples_in_the_docstrings_run(module):  # type: ignore[no-untyped-def]
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
