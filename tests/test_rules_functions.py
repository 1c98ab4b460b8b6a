"""policy.rules.check_functions: the allow-list, extended per policy and per role."""

from __future__ import annotations

import re
import textwrap

import pytest
from golden import SCHEMAS, hospital_policy, principal_from

from gateway.errors import ForbiddenFunctionError, PolicyError
from policy.functions import NEVER_ALLOWED
from policy.loader import parse_policy
from policy.pipeline import plan_query

POLICY = hospital_policy()


def plan(sql: str, who: str) -> str:
    return plan_query(sql, policy=POLICY, principal=principal_from(who), schemas=SCHEMAS).sql


def test_a_role_may_call_what_its_policy_allows() -> None:
    assert "STRIP_ACCENTS" in plan("SELECT strip_accents(name) FROM people", "linker")


@pytest.mark.parametrize("who", ["researcher", "clinician site=north", "owner"])
def test_other_roles_may_not(who: str) -> None:
    with pytest.raises(ForbiddenFunctionError, match="Function 'strip_accents' is not allowed"):
        plan("SELECT strip_accents(name) FROM patients", who)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_query()",
        "SELECT getenv('HOME')",
        "SELECT current_setting('threads')",
        "SELECT getvariable('x')",
        "SELECT stats(name) FROM people",
        "SELECT error(name) FROM people",
    ],
)
def test_never_allowed_functions_stay_refused_for_every_role(sql: str) -> None:
    with pytest.raises(ForbiddenFunctionError):
        plan(sql, "linker")


YAML = textwrap.dedent(
    """\
    version: 1
    domain: {name: d}
    functions: {allow: [ALLOW]}
    datasets:
      s:
        tables:
          t: {source: {format: csv, path: t.csv}}
    roles:
      r: {datasets: {s: {mode: raw}}}
    """
)


@pytest.mark.parametrize(
    "name,message",
    [
        ("read_text", "p.yaml:3: functions.allow[0]: Function 'read_text' can never be allowed"),
        ("glob", "Function 'glob' can never be allowed"),
        ("duckdb_settings", "Function 'duckdb_settings' can never be allowed"),
        ("current_query", "Function 'current_query' can never be allowed"),
        ("pragma_version", "can never be allowed"),
        ("query_table", "can never be allowed"),
        ("strip_acents", "Unknown function 'strip_acents'. Did you mean 'strip_accents'?"),
        ("range_", "Did you mean 'range'?"),
        ("unnest_", "Unknown function"),
        ("repeat_row", "only scalar and aggregate functions can be allowed"),
    ],
)
def test_the_policy_cannot_allow_dangerous_or_unknown_functions(name: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_policy(YAML.replace("ALLOW", name), filename="p.yaml", base_dir="/")


def test_role_level_allow_is_checked_too() -> None:
    text = YAML.replace("functions: {allow: [ALLOW]}\n", "").replace(
        "r: {datasets", "r: {functions: {allow: [getenv]}, datasets"
    )
    with pytest.raises(PolicyError, match=re.escape("roles.r.functions.allow[0]: Function")):
        parse_policy(text, filename="p.yaml", base_dir="/")


def test_top_level_allow_applies_to_every_role_and_to_masks() -> None:
    text = YAML.replace("ALLOW", "strip_accents").replace(
        "t: {source: {format: csv, path: t.csv}}",
        "t: {source: {format: csv, path: t.csv}, columns: {n: {mask: 'strip_accents(n)'}}}",
    )
    policy = parse_policy(text, base_dir="/")
    assert policy.functions_for("r") == {"strip_accents"}
    assert policy.functions_for("nobody") == {"strip_accents"}
    sql = plan_query(
        "SELECT strip_accents(n) AS x FROM t",
        policy=policy,
        principal=principal_from("r"),
        schemas={("s", "t"): {"n": "VARCHAR"}},
    ).sql
    assert sql.count("STRIP_ACCENTS") == 2


def test_a_mask_may_not_use_a_function_the_policy_does_not_allow() -> None:
    text = YAML.replace("functions: {allow: [ALLOW]}\n", "").replace(
        "t: {source: {format: csv, path: t.csv}}",
        "t: {source: {format: csv, path: t.csv}, columns: {n: {mask: 'strip_accents(n)'}}}",
    )
    with pytest.raises(PolicyError, match="Function 'strip_accents' is not allowed"):
        parse_policy(text, base_dir="/")


def test_typed_functions_match_by_any_of_their_names() -> None:
    text = YAML.replace("ALLOW", "random")
    policy = parse_policy(text, base_dir="/")
    sql = plan_query(
        "SELECT random() AS r FROM t",
        policy=policy,
        principal=principal_from("r"),
        schemas={("s", "t"): {"n": "VARCHAR"}},
    ).sql
    assert "RANDOM()" in sql


@pytest.mark.parametrize(
    "allow,sql",
    [
        ("list_append", "SELECT list_append([n], 'x') AS r FROM t"),  # sqlglot: ARRAY_APPEND
        ("list_prepend", "SELECT list_prepend('x', [n]) AS r FROM t"),  # ARRAY_PREPEND
    ],
)
def test_typed_functions_match_by_the_name_written(allow: str, sql: str) -> None:
    policy = parse_policy(YAML.replace("ALLOW", allow), base_dir="/")
    plan_query(
        sql, policy=policy, principal=principal_from("r"), schemas={("s", "t"): {"n": "VARCHAR"}}
    )


def test_the_deny_list_is_explicit() -> None:
    assert isinstance(NEVER_ALLOWED, tuple) and "read_*" in NEVER_ALLOWED
