"""Golden rewrites: tests/fixtures/rewrites/<rule>.sql, loaded by tests/golden.py."""

from __future__ import annotations

from collections import Counter

import pytest
from golden import SCHEMAS, GoldenCase, all_cases, hospital_policy, make_duckdb, normalise

from policy.pipeline import plan_query

CASES = all_cases()
POLICY = hospital_policy()


def test_every_rule_file_has_cases() -> None:
    files = Counter(case.file for case in CASES)
    for rule in ("resolve_tables", "qualify_columns", "apply_table_policy", "enforce_limits"):
        assert files[rule] >= 3, rule


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rewrite(case: GoldenCase) -> None:
    plan = plan_query(case.input, policy=POLICY, principal=case.principal, schemas=SCHEMAS)
    assert plan.sql == normalise(case.expected)


@pytest.mark.parametrize("case", [c for c in CASES if c.execute], ids=lambda c: c.id)
def test_rewrite_runs_and_returns_what_the_policy_promises(case: GoldenCase) -> None:
    plan = plan_query(case.input, policy=POLICY, principal=case.principal, schemas=SCHEMAS)
    con = make_duckdb()
    got = con.execute(plan.sql).fetchall()
    want = con.execute(case.headers["rows"]).fetchall()
    assert sorted(got, key=repr) == sorted(want, key=repr)
