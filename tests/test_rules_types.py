"""policy.rules.check_types: DuckDB's own types only, never one of an attached source."""

from __future__ import annotations

import pytest
from golden import SCHEMAS, hospital_policy, principal_from

from gateway.errors import SqlError
from policy.pipeline import plan_query

POLICY = hospital_policy()


def plan(sql: str) -> str:
    return plan_query(sql, policy=POLICY, principal=principal_from("researcher"),
                      schemas=SCHEMAS).sql


@pytest.mark.parametrize("type_name", [
    "VARCHAR", "hugeint", "UHUGEINT", "varint", "oid", "TIMESTAMP_S", "TIMESTAMPTZ",
    "DECIMAL(4, 1)", "INTEGER[]", "STRUCT(a VARCHAR, b DOUBLE)", "MAP(VARCHAR, INTEGER)",
    "ENUM('a', 'b')", "JSON", "UUID", "BLOB", "INTERVAL",
])
def test_built_in_types_are_allowed(type_name: str) -> None:
    assert "CAST(" in plan(f"SELECT CAST(name AS {type_name}) AS c FROM patients")


@pytest.mark.parametrize(("sql", "named"), [
    ("SELECT CAST(name AS src_0_1.main.mood) AS c FROM patients", "src_0_1.main.mood"),
    ("SELECT name::mood AS c FROM patients", "mood"),
    ("SELECT TRY_CAST(name AS STRUCT(a mood)) AS c FROM patients", "mood"),
    ("SELECT count(*) AS n FROM patients WHERE CAST(name AS other.mood) IS NULL", "other.mood"),
])
def test_other_types_are_refused_by_name(sql: str, named: str) -> None:
    with pytest.raises(SqlError, match=f"Type '{named}' is not a DuckDB type"):
        plan(sql)
