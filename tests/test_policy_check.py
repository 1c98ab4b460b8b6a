"""policy.check: a policy against the real source schemas."""

from __future__ import annotations

import re

import pytest
from golden import SCHEMAS, hospital_policy

from gateway.errors import PolicyError
from policy.check import check_against_schemas
from policy.loader import parse_policy

POLICY = hospital_policy()


def test_the_test_policy_matches_its_schemas() -> None:
    check_against_schemas(POLICY, SCHEMAS)


def with_table(**table: str) -> str:
    lines = "\n".join(f"        {k}: {v}" for k, v in table.items())
    return f"""
version: 1
domain: {{name: d}}
datasets:
  s:
    tables:
      t:
        source: {{format: csv, path: t.csv}}
{lines}
roles:
  r:
    datasets:
      s: {{mode: raw, row_filter: "sit = 'x'", tables: {{t: {{hidden: [agee]}}}}}}
"""


COLUMNS = {("s", "t"): {"site": "VARCHAR", "age": "INTEGER", "pid": "INTEGER"}}


@pytest.mark.parametrize(
    "table,message",
    [
        (
            {"columns": "{agee: {hidden: true}}"},
            "datasets.s.tables.t.columns: Unknown column 'agee'",
        ),
        ({"privacy_unit": "pidd"}, "privacy_unit: Unknown column 'pidd'. Did you mean 'pid'?"),
        ({"row_filter": '"aeg > 3"'}, "row_filter: Unknown column 'aeg'. Did you mean 'age'?"),
        ({"columns": '{site: {mask: "left(sitte, 1)"}}'}, "columns.site.mask: Unknown column"),
        ({}, "roles.r.datasets.s.row_filter (t): Unknown column 'sit'. Did you mean 'site'?"),
    ],
)
def test_unknown_columns(table: dict[str, str], message: str) -> None:
    policy = parse_policy(with_table(**table), filename="p.yaml", base_dir="/")
    with pytest.raises(PolicyError, match=re.escape(message)):
        check_against_schemas(policy, COLUMNS)


def test_missing_schema() -> None:
    with pytest.raises(PolicyError, match="No schema"):
        check_against_schemas(POLICY, {})
