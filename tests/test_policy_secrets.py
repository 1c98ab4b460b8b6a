"""Secrets in masks and filters: bound as literals, never shown, never in an error."""

from __future__ import annotations

import logging
import re
import textwrap

import duckdb
import pytest
from golden import SCHEMAS, hospital_policy, make_duckdb, principal_from

from gateway.errors import PolicyError, StockadeError
from policy.loader import parse_policy
from policy.pipeline import plan_query

SECRET = "s3cr3t-pepper-value"

YAML = textwrap.dedent(
    """\
    version: 1
    domain: {name: d}
    secrets:
      salt: {"$env": STOCKADE_TEST_SALT}
    datasets:
      s:
        tables:
          t:
            source: {format: csv, path: t.csv}
            columns:
              pid: {mask: "sha256({secret.salt} || CAST(pid AS VARCHAR))"}
    roles:
      r: {datasets: {s: {mode: raw, row_filter: "site <> {secret.salt}"}}}
    """
)
SCHEMA = {("s", "t"): {"pid": "INTEGER", "site": "VARCHAR", "age": "INTEGER"}}


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STOCKADE_TEST_SALT", SECRET)
    return parse_policy(YAML, filename="p.yaml", base_dir="/")


def plan(policy, sql: str):  # type: ignore[no-untyped-def]
    return plan_query(sql, policy=policy, principal=principal_from("r"), schemas=SCHEMA)


def test_the_secret_is_bound_in_the_sql_to_run_and_hidden_in_the_sql_to_show(policy) -> None:  # type: ignore[no-untyped-def]
    p = plan(policy, "SELECT pid, age FROM t")
    assert f"SHA256('{SECRET}' || CAST(\"t\".\"pid\" AS TEXT))" in p.sql
    assert f"('{SECRET}')" not in p.display_sql and SECRET not in p.display_sql
    assert "SHA256({secret.salt} || CAST(\"t\".\"pid\" AS TEXT))" in p.display_sql
    assert "\"t\".\"site\" <> {secret.salt}" in p.display_sql
    assert p.display_sql.replace("{secret.salt}", f"'{SECRET}'") == p.sql
    assert SECRET not in repr(p) and SECRET not in repr(policy)


def test_the_mask_runs_and_pseudonymises(policy) -> None:  # type: ignore[no-untyped-def]
    p = plan(policy, "SELECT pid FROM t")
    con = duckdb.connect()
    con.execute("CREATE SCHEMA s; CREATE TABLE s.t AS SELECT 7 AS pid, 'x' AS site, 3 AS age")
    got = con.execute(p.sql).fetchall()
    want = con.execute(f"SELECT sha256('{SECRET}' || '7')").fetchall()
    assert got == want


def test_display_equals_sql_without_secrets() -> None:
    p = plan_query(
        "SELECT age FROM screenings",
        policy=hospital_policy(),
        principal=principal_from("researcher"),
        schemas=SCHEMAS,
    )
    assert p.display_sql == p.sql and p.secret_values == {}


def test_redact_scrubs_an_engine_error(policy) -> None:  # type: ignore[no-untyped-def]
    p = plan(policy, "SELECT pid FROM t")
    message = f"Conversion Error: Could not convert string '{SECRET}' to INT32"
    redacted = "Conversion Error: Could not convert string '{secret.salt}' to INT32"
    assert p.redact(message) == redacted


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT $__stockade_secret_salt AS x FROM t",
        "SELECT :__stockade_secret_salt AS x FROM t",
        "SELECT ? AS x FROM t",
    ],
)
def test_the_analyst_cannot_name_the_secret(policy, sql: str) -> None:  # type: ignore[no-untyped-def]
    try:
        p = plan(policy, sql)
    except StockadeError as err:
        assert SECRET not in str(err)
        return
    select_list = p.sql.split(" FROM ", 1)[0]
    assert SECRET not in select_list and p.parameter_count == 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_query()",
        "SELECT pid FROM t WHERE CAST(pid AS INTEGER) > 0",
        "SELECT unknown_column FROM t",
        "SELECT pid + 1 FROM t",
        "SELECT getvariable('salt')",
    ],
)
def test_errors_never_carry_the_secret(policy, sql: str) -> None:  # type: ignore[no-untyped-def]
    try:
        p = plan(policy, sql)
    except StockadeError as err:
        assert SECRET not in str(err)
        return
    con = duckdb.connect()
    con.execute("CREATE SCHEMA s; CREATE TABLE s.t AS SELECT 7 AS pid, 'x' AS site, 3 AS age")
    with pytest.raises(duckdb.Error) as err:
        con.execute(p.sql).fetchall()
    assert SECRET not in p.redact(str(err.value))


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("{secret.salt} ||", "{secret.slat} ||", "p.yaml:11: datasets.s.tables.t.columns.pid.mask: "
         "Unknown secret 'slat'. Did you mean 'salt'?"),
        ("{secret.salt} ||", "'{secret.salt}' ||", "must not be quoted"),
        ("site <> {secret.salt}", "site <> {secret.pepper}", "Unknown secret 'pepper'. Declare it"),
        ('{"$env": STOCKADE_TEST_SALT}', "''", "Secret 'salt' is empty"),
        ('{"$env": STOCKADE_TEST_SALT}', "[1, 2]", 'Expected {"$env": NAME}'),
        ('{"$env": STOCKADE_TEST_SALT}', "12345", 'Expected {"$env": NAME}'),
        ('{"$env": STOCKADE_TEST_SALT}', '{"$env": STOCKADE_NOT_SET}',
         "STOCKADE_NOT_SET is not set"),
    ],
)  # fmt: skip
def test_secret_errors(policy, old: str, new: str, message: str) -> None:  # type: ignore[no-untyped-def]
    del policy  # the fixture sets the environment
    assert old in YAML
    with pytest.raises(PolicyError, match=re.escape(message)) as err:
        parse_policy(YAML.replace(old, new), filename="p.yaml", base_dir="/")
    assert SECRET not in str(err.value)


def test_literal_secrets_load_with_a_warning_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    text = YAML.replace('{"$env": STOCKADE_TEST_SALT}', f'"{SECRET}"')
    with caplog.at_level(logging.WARNING, logger="stockade.policy"):
        policy = parse_policy(text, filename="p.yaml", base_dir="/")
    assert policy.secrets["salt"] == SECRET
    assert "secret 'salt' is written in the policy file" in caplog.text
    assert SECRET not in caplog.text


def test_the_golden_policy_pseudonymises_with_its_salt() -> None:
    p = plan_query(
        "SELECT pid FROM people ORDER BY pid",
        policy=hospital_policy(),
        principal=principal_from("linker"),
        schemas=SCHEMAS,
    )
    assert "test-salt" in p.sql and "test-salt" not in p.display_sql
    rows = make_duckdb().execute(p.sql).fetchall()
    assert all(re.fullmatch("[0-9a-f]{64}", r[0]) for r in rows)
