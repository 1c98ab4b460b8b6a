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
            "p.yaml:9: datasets.s.tables.t.columns.agee: Unknown column 'agee'",
        ),
        ({"privacy_unit": "pidd"}, "p.yaml:9: datasets.s.tables.t.privacy_unit: Unknown column "
         "'pidd'. Did you mean 'pid'?"),
        ({"join_keys": "[pid, sitte]"}, "p.yaml:9: datasets.s.tables.t.join_keys[1]: Unknown "
         "column 'sitte'. Did you mean 'site'?"),
        ({"row_filter": '"aeg > 3"'}, "row_filter: Unknown column 'aeg'. Did you mean 'age'?"),
        ({"columns": '{site: {mask: "left(sitte, 1)"}}'}, "columns.site.mask: Unknown column"),
        ({}, "p.yaml:13: roles.r.datasets.s.row_filter (t): Unknown column 'sit'. "
         "Did you mean 'site'?"),
    ],
)
def test_unknown_columns(table: dict[str, str], message: str) -> None:
    policy = parse_policy(with_table(**table), filename="p.yaml", base_dir="/")
    with pytest.raises(PolicyError, match=re.escape(message)):
        check_against_schemas(policy, COLUMNS)


def test_missing_schema() -> None:
    with pytest.raises(PolicyError, match="No schema"):
        check_against_schemas(POLICY, {})


def test_hidden_lists_are_located_per_item() -> None:
    text = with_table().replace("sit = 'x'", "site = 'x'").replace("[agee]", "[age, sitee]")
    policy = parse_policy(text, filename="p.yaml", base_dir="/")
    with pytest.raises(PolicyError, match=re.escape(
        "p.yaml:13: roles.r.datasets.s.tables.t.hidden[1]: Unknown column 'sitee'"
    )):
        check_against_schemas(policy, COLUMNS)


def test_lines_are_kept_on_the_policy() -> None:
    policy = parse_policy(with_table(row_filter='"age > 3"'), filename="p.yaml", base_dir="/")
    assert policy.lines["datasets.s.tables.t.row_filter"] == 9
    assert policy.line_of("datasets.s.tables.t.columns.nope") == 7
    text = "\n\n" + with_table(row_filter='"age > 3"')
    again = parse_policy(text, filename="p.yaml", base_dir="/")
    assert again == policy and again.lines != policy.lines


TYPE_ERRORS = [
    ({"row_filter": '"age"'}, "row_filter: A row filter must be a condition (BOOLEAN), but "
     "'age' (INTEGER) is INT; compare it, e.g. age > 0"),
    ({"row_filter": '"upper(site)"'}, "must be a condition (BOOLEAN), but 'UPPER(site)' (TEXT)"),
    ({"row_filter": '"site = 3"'}, "'site = 3' compares text with a number ('site' (VARCHAR) "
     "and '3' (INT)); quote the value or cast one side"),
    ({"row_filter": '"age + site > 3"'}, "Arithmetic on text: 'site' (VARCHAR)"),
    ({"columns": '{site: {mask: "left(age, 2)"}}'}, "p.yaml:9: datasets.s.tables.t.columns.site"
     ".mask: 'left' needs text, but 'age' (INTEGER) is not text; write CAST(age AS VARCHAR)"),
    ({"columns": '{pid: {mask: "md5(pid)"}}'}, "'md5' needs text, but 'pid' (INTEGER)"),
    ({"columns": '{pid: {mask: "sha256(pid)"}}'}, "'sha256' needs text, but 'pid' (INTEGER)"),
]  # fmt: skip


@pytest.mark.parametrize("table,message", TYPE_ERRORS)
def test_types(table: dict[str, str], message: str) -> None:
    text = with_table(**table).replace("sit = 'x'", "site = 'x'")
    policy = parse_policy(text, filename="p.yaml", base_dir="/")
    with pytest.raises(PolicyError, match=re.escape(message)):
        check_against_schemas(policy, COLUMNS)


@pytest.mark.parametrize(
    "table",
    [
        {"row_filter": '"age > 3 AND site IN (\'a\', \'b\')"'},
        {"row_filter": '"coalesce(age, 0) >= 18"'},
        {"row_filter": '"site = {user.site}"'},
        {"row_filter": '"NOT (age IS NULL)"'},
        {"columns": '{pid: {mask: "md5(CAST(pid AS VARCHAR))"}}'},
        {"columns": '{age: {mask: "age // 10 * 10"}}'},
        {"columns": '{site: {mask: "left(site, 1) || \'*\'"}}'},
        {"columns": '{site: {mask: "NULL"}}'},
    ],
)
def test_well_typed_fragments_pass(table: dict[str, str]) -> None:
    text = with_table(**table).replace("sit = 'x'", "site = 'x'").replace("[agee]", "[age]")
    check_against_schemas(parse_policy(text, filename="p.yaml", base_dir="/"), COLUMNS)
