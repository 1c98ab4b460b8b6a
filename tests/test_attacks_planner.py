"""The attack corpus at the planner level.

Each query must be refused with the right error class, or (for the "safe
rewrite" cases) produce SQL that, run on DuckDB, shows nothing the policy hides.
"""

from __future__ import annotations

import re

import pytest
from golden import SCHEMAS, hospital_policy, make_duckdb

from gateway.errors import (
    ForbiddenFunctionError,
    NotSupportedError,
    RefusedStatementError,
    SqlError,
    SqlSyntaxError,
    StockadeError,
    TableNotFoundError,
    UnknownColumnError,
)
from policy.expressions import FragmentError
from policy.pipeline import plan_query
from policy.principal import Principal

POLICY = hospital_policy()
RESEARCHER = Principal("rita", "researcher")
CLINICIAN = Principal("carl", "clinician", {"site": "north"})


def plan(sql: str, principal: Principal = RESEARCHER, **kwargs: object) -> str:
    return plan_query(sql, policy=POLICY, principal=principal, schemas=SCHEMAS, **kwargs).sql  # type: ignore[arg-type]


REFUSED_STATEMENTS = [
    "DROP TABLE oncology.screenings",
    "CREATE TABLE x AS SELECT 1",
    "CREATE VIEW v AS SELECT * FROM screenings",
    "ALTER TABLE screenings ADD COLUMN x INT",
    "INSERT INTO screenings VALUES (1)",
    "UPDATE screenings SET age = 1",
    "DELETE FROM screenings",
    "TRUNCATE screenings",
    "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
    "PRAGMA enable_external_access",
    "PRAGMA version",
    "SET enable_external_access = true",
    "SET VARIABLE x = 1",
    "RESET threads",
    "ATTACH '/tmp/x.db' AS x",
    "DETACH x",
    "COPY screenings TO '/tmp/out.csv'",
    "COPY (SELECT * FROM screenings) TO '/tmp/out.csv'",
    "EXPORT DATABASE '/tmp/out'",
    "IMPORT DATABASE '/tmp/out'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CALL pragma_version()",
    "USE oncology",
    "DESCRIBE screenings",
    "SHOW TABLES",
    "SHOW ALL TABLES",
    "SUMMARIZE screenings",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "COMMIT",
    "SELECT * INTO newtable FROM screenings",
    "WITH a AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM a",
    "WITH a AS (DELETE FROM screenings RETURNING *) SELECT * FROM a",
    "EXPLAIN SELECT 1",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "CREATE SECRET s (TYPE s3, KEY_ID 'x')",
    "CREATE MACRO m(a) AS a",
    "VALUES (1), (2)",
]


@pytest.mark.parametrize("sql", REFUSED_STATEMENTS)
def test_refused_statements(sql: str) -> None:
    with pytest.raises((RefusedStatementError, SqlSyntaxError)):
        plan(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DROP TABLE x",
        "SELECT 1; SELECT 2",
        "SELECT 1;\nATTACH 'x.db'",
        "SELECT 1 /* ; */; -- \nDROP TABLE x",
        "SELECT age FROM screenings -- ; DROP TABLE x\n; PRAGMA version",
    ],
)
def test_multiple_statements(sql: str) -> None:
    with pytest.raises(SqlSyntaxError, match="exactly one statement"):
        plan(sql)


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1 /* DROP TABLE x */", "SELECT 1 -- ; DROP TABLE x", "SELECT /*+ x */ 1"],
)
def test_comments_are_only_comments(sql: str) -> None:
    assert "DROP" not in plan(sql).upper().replace("/*", "").split("*/")[-1]


@pytest.mark.parametrize("sql", ["", "   ", "-- nothing\n", ";", "/* x */"])
def test_empty_input(sql: str) -> None:
    with pytest.raises(SqlSyntaxError, match="empty"):
        plan(sql)


def test_syntax_error_has_line_and_column() -> None:
    with pytest.raises(SqlSyntaxError) as err:
        plan("SELECT age\nFROM screenings WHERE (")
    assert err.value.line == 2


NOT_FOUND = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'data/screenings.parquet'",
    "FROM '/etc/passwd'",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM query('SELECT * FROM oncology.screenings')",
    "SELECT * FROM query_table('oncology.screenings')",
    "SELECT * FROM range(10)",
    "SELECT * FROM generate_series(1, 10)",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM information_schema.columns",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM duckdb_columns()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM pg_catalog.pg_tables",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM pragma_table_info('screenings')",
    "SELECT * FROM unknown_table",
    "SELECT * FROM billing.rates",  # denied by table grant
    "SELECT * FROM rates",
    "SELECT * FROM vault.notes",  # dataset not granted
    "SELECT * FROM other_domain.oncology.screenings",  # 3-part name, another catalog
    "SELECT * FROM memory.oncology.screenings",
    "SELECT * FROM system.main.duckdb_tables",
    "SELECT age FROM screenings WHERE age IN (SELECT price FROM billing.rates)",
    "SELECT (SELECT max(price) FROM billing.rates) AS p",
    "SELECT * FROM screenings s JOIN vault.notes n ON true",
    "WITH x AS (SELECT * FROM billing.rates) SELECT * FROM x",
    "SELECT * FROM screenings UNION ALL SELECT * FROM billing.rates",
    'SELECT * FROM "billing"."rates"',
    'SELECT * FROM "BILLING"."RATES"',
    "SELECT * FROM oncology.screenings.age",
    "SELECT * FROM (WITH screenings AS (SELECT 1 AS a) SELECT * FROM screenings) x, rates",
]


@pytest.mark.parametrize("sql", NOT_FOUND)
def test_tables_outside_the_catalog_are_not_found(sql: str) -> None:
    with pytest.raises(TableNotFoundError) as err:
        plan(sql)
    assert "not found" in str(err.value)


def test_table_functions_are_named_in_the_message() -> None:
    with pytest.raises(TableNotFoundError, match=re.escape("Table 'read_csv(…)' not found")):
        plan("SELECT * FROM read_csv('/etc/passwd')")


def test_denied_and_unknown_tables_give_the_same_message() -> None:
    messages = []
    for sql in ("SELECT * FROM billing.rates", "SELECT * FROM billing.ratez"):
        with pytest.raises(TableNotFoundError) as err:
            plan(sql)
        messages.append(re.sub(r"'billing\.rate.'", "T", str(err.value)))
    assert messages[0] == messages[1]
    assert "rates" not in messages[0]


def test_suggestions_come_from_visible_tables_only() -> None:
    with pytest.raises(TableNotFoundError, match=re.escape("Did you mean 'invoices'?")):
        plan("SELECT * FROM invoice")
    with pytest.raises(TableNotFoundError) as err:
        plan("SELECT * FROM rate")
    assert "rates" not in str(err.value)


def test_table_not_found_has_location() -> None:
    with pytest.raises(TableNotFoundError) as err:
        plan("SELECT 1\nFROM nope")
    assert (err.value.line, err.value.col) == (2, 6)


FORBIDDEN = [
    "SELECT getenv('HOME')",
    "SELECT current_setting('threads')",
    "SELECT current_setting('enable_external_access')",
    "SELECT read_text('/etc/passwd')",
    "SELECT getvariable('x')",
    "SELECT version()",
    "SELECT current_database()",
    "SELECT current_schema()",
    "SELECT current_user",
    "SELECT pragma_version()",
    "SELECT duckdb_extensions()",
    "SELECT age, glob('/*') FROM screenings",
    "SELECT COLUMNS('.*') FROM screenings",
    "SELECT COLUMNS(*) FROM screenings",
    "SELECT age FROM screenings WHERE getenv('HOME') IS NOT NULL",
    "SELECT list_transform([1], x -> getenv('HOME'))",
    "SELECT to_json(getenv('HOME'))",
    "SELECT uuid()",
    "SELECT random()",
    "SELECT nextval('seq')",
    "SELECT sleep_ms(1000)",
    "SELECT error('x')",
    "SELECT make_secret()",
    "SELECT load_extension('x')",
]


@pytest.mark.parametrize("sql", FORBIDDEN)
def test_functions_outside_the_allow_list(sql: str) -> None:
    with pytest.raises((ForbiddenFunctionError, SqlSyntaxError)):
        plan(sql)


HIDDEN = [
    "SELECT ssn FROM screenings",
    "SELECT patient_id FROM screenings",
    "SELECT s.ssn FROM screenings s",
    "SELECT screenings.ssn FROM oncology.screenings",
    "SELECT oncology.screenings.ssn FROM oncology.screenings",
    "SELECT age FROM screenings WHERE ssn = '111-11-1111'",
    "SELECT age FROM screenings ORDER BY ssn",
    "SELECT count(*) FROM screenings GROUP BY ssn",
    "SELECT age FROM screenings s JOIN patients p ON s.patient_id = p.patient_id",
    "SELECT age FROM screenings JOIN patients USING (ssn)",
    "SELECT age FROM screenings JOIN patients USING (patient_id)",
    "WITH screenings AS (SELECT * FROM screenings) SELECT ssn FROM screenings",
    "WITH x AS (SELECT ssn FROM screenings) SELECT * FROM x",
    "SELECT ssn FROM (SELECT * FROM screenings) t",
    "SELECT t.ssn FROM (SELECT * FROM screenings) AS t",
    "SELECT name FROM patients p WHERE EXISTS "
    "(SELECT 1 FROM screenings s WHERE s.patient_id = p.patient_id)",
    "SELECT name FROM patients p WHERE p.site IN (SELECT s.ssn FROM screenings s)",
    "SELECT p.name, l.x FROM patients p, LATERAL (SELECT p.ssn AS x) l",
    "SELECT age FROM screenings UNION SELECT ssn FROM patients",
    "SELECT age FROM screenings UNION SELECT ssn FROM screenings",
    "SELECT rowid FROM screenings",
    "SELECT s.rowid FROM screenings s",
    "SELECT SSN FROM screenings",
    'SELECT "SSN" FROM screenings',
    'SELECT "ssn" FROM "oncology"."screenings"',
    "SELECT * EXCLUDE (ssn) FROM screenings",
    "SELECT age, sum(age) OVER (PARTITION BY ssn) FROM screenings",
    "SELECT CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END FROM screenings",
    "SELECT CAST(ssn AS INTEGER) FROM screenings",
    "SELECT 1 / (ssn = '111-11-1111')::INT FROM screenings",
    "SELECT zip FROM screenings s",  # hidden for clinicians: see below (researcher sees mask)
]


@pytest.mark.parametrize("sql", HIDDEN[:-1])
def test_hidden_columns_do_not_exist(sql: str) -> None:
    with pytest.raises((UnknownColumnError, SqlError)) as err:
        plan(sql)
    suggestion = re.search(r"Did you mean '([^']+)'", str(err.value))
    assert suggestion is None or suggestion.group(1).lower() != "ssn"


def test_grant_hidden_column_for_clinician() -> None:
    with pytest.raises(UnknownColumnError, match="Unknown column 'zip'"):
        plan("SELECT zip FROM screenings", CLINICIAN)


def test_unknown_column_message_suggests_visible_columns() -> None:
    with pytest.raises(
        UnknownColumnError,
        match=re.escape("Unknown column 'nmae' in table 'patients'. Did you mean 'name'?"),
    ):
        plan("SELECT nmae FROM patients")
    with pytest.raises(UnknownColumnError) as err:
        plan("SELECT ssnn FROM patients")
    assert "Did you mean" not in str(err.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT s FROM screenings s",
        "SELECT screenings FROM screenings",
        "SELECT to_json(s) FROM screenings s",
        "SELECT struct_pack(s) FROM screenings s",
    ],
)
def test_whole_row_values_are_refused(sql: str) -> None:
    with pytest.raises(UnknownColumnError):
        plan(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM screenings",
        "SELECT s.* FROM screenings s",
        "SELECT * FROM screenings NATURAL JOIN patients",
        "SELECT * FROM (SELECT * FROM screenings) t",
        "WITH screenings AS (SELECT * FROM screenings) SELECT * FROM screenings",
        "SELECT * REPLACE (age + 1 AS age) FROM screenings",
        "SELECT * FROM screenings s, LATERAL (SELECT s.age + 1 AS a2) l",
        "SELECT * FROM screenings UNION ALL SELECT * FROM screenings",
        "SELECT * FROM patients p WHERE EXISTS (SELECT * FROM screenings s WHERE s.site = p.site)",
    ],
)
def test_safe_rewrites_never_show_hidden_values(sql: str) -> None:
    con = make_duckdb()
    for principal in (RESEARCHER, CLINICIAN):
        result = con.execute(plan(sql, principal))
        names = {d[0].lower() for d in result.description}
        rows = result.fetchall()
        assert "ssn" not in names
        if "patients" not in sql:
            assert "patient_id" not in names
        flat = repr(rows)
        assert "111-11" not in flat and "222-22" not in flat
        # the consent filter holds: patient 2 (no consent) never appears
        assert "10002" not in flat and "51" not in flat


def test_row_filters_really_filter_on_duckdb() -> None:
    con = make_duckdb()
    rows = con.execute(plan("SELECT site, age FROM screenings ORDER BY age", CLINICIAN)).fetchall()
    assert rows == [("north", 34)]
    rows = con.execute(plan("SELECT site FROM patients ORDER BY name", CLINICIAN)).fetchall()
    assert rows == [("north",), ("north",)]


def test_masks_really_mask_on_duckdb() -> None:
    con = make_duckdb()
    rows = con.execute(plan("SELECT zip FROM screenings ORDER BY zip")).fetchall()
    assert rows == [("100**",), ("200**",), ("200**",), ("300**",)]
    # filtering on a masked column sees the masked value, not the raw one
    assert con.execute(plan("SELECT age FROM screenings WHERE zip = '10001'")).fetchall() == []


@pytest.mark.parametrize(
    "site",
    [
        "north' OR '1'='1",
        "x'; DROP TABLE oncology.screenings; --",
        "north\\' OR 1=1 --",
        "' UNION SELECT ssn FROM oncology.screenings --",
        '"north"',
    ],
)
def test_attribute_injection_stays_a_literal(site: str) -> None:
    con = make_duckdb()
    sql = plan("SELECT site, age FROM screenings", Principal("eve", "clinician", {"site": site}))
    assert con.execute(sql).fetchall() == []
    assert con.execute("SELECT count(*) FROM oncology.screenings").fetchone() == (5,)


@pytest.mark.parametrize("value,rows", [(1, []), (True, []), (2.5, [])])
def test_attribute_values_are_typed(value: object, rows: list[object]) -> None:
    sql = plan("SELECT age FROM screenings", Principal("eve", "clinician", {"site": value}))
    assert "site\" = '" not in sql  # not a string literal


def test_missing_attribute_is_a_clear_error() -> None:
    with pytest.raises(FragmentError, match="has no attribute 'site'"):
        plan("SELECT age FROM screenings", Principal("eve", "clinician"))


@pytest.mark.parametrize(
    "principal,table,mode",
    [
        (Principal("a", "analyst"), "patients", "dp"),
    ],
)
def test_aggregate_and_dp_modes_are_not_supported_yet(
    principal: Principal, table: str, mode: str
) -> None:
    with pytest.raises(
        NotSupportedError,
        match=re.escape(
            f"Table 'oncology.{table}' is in '{mode}' mode for your role; "
            f"{mode} access is not supported yet by this gateway."
        ),
    ):
        plan(f"SELECT count(*) FROM {table}", principal)


def test_roles_without_grants_see_nothing() -> None:
    for role in ("nobody", "no_such_role"):
        with pytest.raises(TableNotFoundError):
            plan("SELECT 1 FROM screenings", Principal("x", role))


def test_admin_denied_dataset_stays_denied() -> None:
    with pytest.raises(TableNotFoundError):
        plan("SELECT * FROM vault.notes", Principal("o", "owner"))


@pytest.mark.parametrize(
    "sql,dialect",
    [
        ("SELECT TOP 1 age FROM oncology.screenings", "tsql"),
        ("SELECT age FROM `oncology`.`screenings`", "bigquery"),
        ("SELECT age FROM oncology.screenings WHERE site ILIKE 'n%'", "postgres"),
    ],
)
def test_other_dialects_are_transpiled_then_checked(sql: str, dialect: str) -> None:
    con = make_duckdb()
    con.execute(plan(sql, dialect=dialect)).fetchall()


@pytest.mark.parametrize(
    "sql,dialect",
    [
        ("SELECT * FROM OPENROWSET('x')", "tsql"),
        ("SELECT * FROM `billing`.`rates`", "bigquery"),
        ("SELECT pg_read_file('/etc/passwd')", "postgres"),
        ("COPY oncology.screenings TO '/tmp/x'", "postgres"),
    ],
)
def test_dialect_tricks_are_refused(sql: str, dialect: str) -> None:
    with pytest.raises(StockadeError):
        plan(sql, dialect=dialect)


def test_unknown_dialect() -> None:
    with pytest.raises(NotSupportedError, match="Did you mean 'postgres'"):
        plan("SELECT 1", dialect="postgre")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM screenings",
        "SELECT age FROM screenings WHERE site = ? AND age > ? LIMIT ?",
        "WITH x AS (SELECT * FROM screenings WHERE age > $1) SELECT * FROM x",
        "SELECT name FROM patients p WHERE EXISTS (SELECT 1 FROM screenings s WHERE s.site = ?)",
    ],
)
def test_planned_sql_touches_only_policy_views(sql: str) -> None:
    result = plan_query(sql, policy=POLICY, principal=RESEARCHER, schemas=SCHEMAS)
    import sqlglot
    from sqlglot import exp

    reparsed = sqlglot.parse_one(result.sql, read="duckdb")
    for table in reparsed.find_all(exp.Table):
        if table.db:
            assert (table.db, table.name) in {("oncology", "screenings"), ("oncology", "patients")}
    assert result.parameter_count == sql.count("?") + sql.count("$1")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT site FROM screenings GROUP BY site HAVING max(ssn) > ''",
        "SELECT count(*) FROM screenings HAVING count(patient_id) > 0",
        "SELECT site FROM screenings QUALIFY max(ssn) OVER () > ''",
        "SELECT site FROM screenings UNION SELECT name FROM patients ORDER BY ssn",
        "SELECT l.ssn FROM screenings s, LATERAL (SELECT ssn) AS l",
        "SELECT * FROM screenings CROSS JOIN LATERAL (SELECT patient_id) AS l",
    ],
)
def test_hidden_columns_under_having_and_lateral_do_not_exist(sql: str) -> None:
    with pytest.raises(UnknownColumnError, match=r"^Unknown column '(ssn|patient_id)'") as err:
        plan(sql)
    assert "Did you mean 'ssn'" not in str(err.value)


def test_hidden_and_unknown_columns_under_having_give_the_same_message() -> None:
    messages = []
    for name in ("ssn", "sssn"):
        with pytest.raises(UnknownColumnError) as err:
            plan(f"SELECT site FROM screenings GROUP BY site HAVING max({name}) > ''")
        messages.append(str(err.value).replace(f"'{name}'", "C"))
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    "sql",
    [
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
        "SELECT n FROM r",
        "WITH RECURSIVE r AS (SELECT age FROM screenings) SELECT * FROM r",
        "SELECT * FROM (WITH RECURSIVE r AS (SELECT 1 AS n) SELECT n FROM r) AS t",
    ],
)
def test_recursive_ctes_are_not_supported(sql: str) -> None:
    with pytest.raises(NotSupportedError, match="^Recursive CTEs are not supported"):
        plan(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM (screenings)",
        "SELECT * FROM ((screenings))",
        "SELECT s.age FROM (screenings) AS s",
        "SELECT * FROM patients JOIN (screenings) ON true",
        "WITH w AS (SELECT age FROM screenings) SELECT * FROM (w)",
    ],
)
def test_tables_in_parentheses_run_on_duckdb(sql: str) -> None:
    rows = make_duckdb().execute(plan(sql)).fetchall()
    assert rows
    assert "111-11" not in repr(rows)


def test_joins_in_parentheses_are_refused_clearly() -> None:
    with pytest.raises(NotSupportedError, match="^Joins in parentheses are not supported"):
        plan("SELECT * FROM (screenings s JOIN patients p ON s.site = p.site)")


@pytest.mark.parametrize(
    "sql,message",
    [
        ("SELECT * FROM screenings, screenings",
         "Table 'screenings' appears twice in FROM; give each an alias"),
        ("SELECT 1 FROM screenings JOIN oncology.screenings ON true",
         "Table 'screenings' appears twice in FROM; give each an alias"),
        ("SELECT 1 FROM screenings s, patients s",
         "Alias 's' is used twice in FROM; give each table its own alias"),
        ("SELECT 1 FROM screenings, (SELECT 1 AS a) AS Screenings",
         "Alias 'Screenings' is used twice in FROM; give each table its own alias"),
    ],
)  # fmt: skip
def test_duplicate_names_in_from(sql: str, message: str) -> None:
    with pytest.raises(SqlError, match=f"^{re.escape(message)}"):
        plan(sql)


def test_the_same_table_twice_with_aliases_is_fine() -> None:
    rows = make_duckdb().execute(plan("SELECT a.age FROM screenings a, screenings b")).fetchall()
    assert len(rows) == 16


@pytest.mark.parametrize(
    "sql,name",
    [
        ("SELECT random()", "random"),
        ("SELECT gen_random_uuid()", "gen_random_uuid"),
        ("SELECT uuid_string()", "uuid_string"),
        ("SELECT list_append([1], 2)", "list_append"),
        ("SELECT age FROM screenings WHERE version() <> ''", "version"),
    ],
)
def test_refused_functions_are_named_as_written(sql: str, name: str) -> None:
    with pytest.raises(ForbiddenFunctionError, match=f"^Function '{name}' is not allowed") as err:
        plan(sql)
    assert err.value.col == sql.index(name) + 1


@pytest.mark.parametrize(
    "sql,rows",
    [
        ("SELECT unnest([1, 2, 3]) AS u", [(1,), (2,), (3,)]),
        ("SELECT unnest(['a', 'b']) AS u", [("a",), ("b",)]),
        ("SELECT unnest([[1], [2, 3]], recursive := true) AS u", [(1,), (2,), (3,)]),
    ],
)
def test_unnest_of_a_list_is_allowed(sql: str, rows: list[tuple[object, ...]]) -> None:
    assert make_duckdb().execute(plan(sql)).fetchall() == rows


def test_unnest_over_a_table_column_sees_only_what_the_policy_shows() -> None:
    sql = "SELECT unnest([zip, site]) AS v FROM screenings"
    values = {v for (v,) in make_duckdb().execute(plan(sql)).fetchall()}
    assert values == {"100**", "200**", "300**", "north", "south", "o'hara"}
    with pytest.raises(UnknownColumnError):
        plan("SELECT unnest([ssn]) FROM screenings")
