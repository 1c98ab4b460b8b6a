"""The cost model on analyst SQL (policy.rules.check_costs): the work one row can cause.

Each refused query is a timing attack shape: a condition on one person selects an
expensive expression. Each allowed one stays linear in the row's size.
"""

from __future__ import annotations

import re

import pytest
from test_rules_aggregate import AUDITOR, clinic_plan

from gateway.errors import ForbiddenFunctionError
from policy.principal import Principal
from policy.rules.check_costs import MAX_FACTOR, MAX_PRODUCT

REFUSED = [
    # the red team's query: 1.1 s when the condition holds, 0 s when not
    ("SELECT count(CASE WHEN result = 'secret-x' THEN levenshtein(repeat(result, 1500), "
     "'x') END) AS n FROM visits", "levenshtein"),
    ("SELECT count(*) AS n FROM visits WHERE jaro_winkler_similarity(result, 'a') > 0.5",
     "jaro_winkler_similarity"),
    ("SELECT count(*) AS n FROM visits WHERE damerau_levenshtein(result, site) > 1",
     "damerau_levenshtein"),
    ("SELECT count(*) AS n FROM visits WHERE length(repeat(result, 1500)) > 1",
     f"at most {MAX_FACTOR} times larger"),
    ("SELECT count(*) AS n FROM visits WHERE length(repeat(result, age)) > 1",
     "must be a number written in the query"),
    ("SELECT count(*) AS n FROM visits WHERE length(lpad(result, 100000, 'x')) > 1",
     f"at most {MAX_FACTOR} times larger"),
    ("SELECT count(*) AS n FROM visits WHERE length(repeat(repeat(result, 200), 200)) > 1",
     f"at most {MAX_PRODUCT} times larger"),
    ("SELECT count(*) AS n FROM visits WHERE length(bar(age, 0, 100, age * 1000)) > 1",
     "must be a number written in the query"),
    ("SELECT count(*) AS n FROM visits WHERE length(printf('%100000d', age)) > 1",
     "width in the format"),
    ("SELECT count(*) AS n FROM visits WHERE length(format(result, age)) > 1",
     "format of 'format' must be text"),
]

ALLOWED = [
    "SELECT count(*) AS n FROM visits WHERE length(repeat(result, 3)) > 1",
    "SELECT site, count(*) AS n FROM visits WHERE lpad(result, 10, '0') <> '' GROUP BY site",
    "SELECT count(*) AS n FROM visits WHERE hamming(result, result) = 0",
    "SELECT count(*) AS n FROM visits WHERE printf('%5d', age) <> ''",
]


@pytest.mark.parametrize(("sql", "message"), REFUSED)
def test_expensive_work_per_row_is_refused_on_protected_tables(sql: str, message: str) -> None:
    with pytest.raises(ForbiddenFunctionError, match=re.escape(message)) as info:
        clinic_plan(sql)
    assert info.value.line == 1 and info.value.col is not None  # points into the SQL


@pytest.mark.parametrize("sql", ALLOWED)
def test_linear_work_is_allowed(sql: str) -> None:
    assert clinic_plan(sql).sql


def test_raw_mode_is_not_limited() -> None:
    # Rows are visible in raw mode: their timing tells nothing more.
    clinic_plan("SELECT levenshtein(code, label) AS d, repeat(code, 5000) AS r "
                "FROM ref.regions")
    clinic_plan("SELECT levenshtein(result, site) AS d FROM visits",
                principal=Principal("ann", "reader"))


def test_a_raw_table_joined_to_a_protected_one_is_limited() -> None:
    with pytest.raises(ForbiddenFunctionError, match="levenshtein"):
        clinic_plan("SELECT count(*) AS n FROM visits v JOIN ref.regions r ON r.code = v.site "
                    "WHERE levenshtein(r.label, 'x') > 1")
    assert AUDITOR.role == "auditor"


@pytest.mark.parametrize("principal", [AUDITOR, Principal("ann", "reader")])
def test_a_date_part_from_the_data_is_refused_in_every_mode(principal: Principal) -> None:
    # DuckDB 1.5.5 invalidates the whole database when such a part is 'epoch' and the
    # value a TIMESTAMPTZ: one query would stop the gateway for everyone.
    with pytest.raises(ForbiddenFunctionError, match="must be written in the query"):
        clinic_plan("SELECT count(*) AS n FROM visits WHERE date_part(result, now()) > 0",
                    principal=principal)
    clinic_plan("SELECT count(*) AS n FROM visits WHERE date_part('year', now()) > 0",
                principal=principal)
