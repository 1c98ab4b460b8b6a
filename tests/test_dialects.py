"""SQL dialects: how a query's dialect is chosen, and other dialects through ADBC."""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import duckdb
import pytest

from gateway.dialects import check_dialect, query_dialect, resolve_dialect
from gateway.errors import InputError
from policy.rules.parse import parse
from tests.conftest import USERS

HEADER = "adbc.flight.sql.rpc.call_header.x-stockade-dialect"
SESSION = "adbc.flight.sql.session.option.stockade.dialect"

# -- resolution -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "session", "connection", "expected"),
    [
        ("SELECT 1", None, None, "duckdb"),
        ("SELECT 1", None, "tsql", "tsql"),
        ("SELECT 1", "postgres", "tsql", "postgres"),
        ("/* dialect: mysql */ SELECT 1", "postgres", "tsql", "mysql"),
        ("-- dialect: spark\nSELECT 1", None, "tsql", "spark"),
        ("  \n/*dialect:BigQuery*/SELECT 1", None, None, "bigquery"),
        ("--Dialect: trino\nSELECT 1", None, None, "trino"),
        ("/* a comment */ SELECT 1", "postgres", None, "postgres"),
        ("SELECT 1 /* dialect: mysql */", None, None, "duckdb"),  # only a leading comment
        ("SELECT 1", "", "snowflake", "snowflake"),
    ],
)
def test_precedence_query_then_session_then_connection(sql, session, connection, expected):
    assert resolve_dialect(sql, session=session, connection=connection)[0] == expected


@pytest.mark.parametrize(
    ("given", "suggestion"),
    [("postgresql", "postgres"), ("tsq", "tsql"), ("snowflak", "snowflake"), ("sparkk", "spark")],
)
def test_unknown_dialect_suggests(given, suggestion):
    with pytest.raises(InputError, match=f"Unknown SQL dialect '{given}'. "
                                         f"Did you mean '{suggestion}'\\?"):
        check_dialect(given)
    with pytest.raises(InputError, match="Did you mean"):
        resolve_dialect(f"/* dialect: {given} */ SELECT 1")
    with pytest.raises(InputError, match="Did you mean"):
        resolve_dialect("SELECT 1", session=given)


def test_empty_directive_is_an_error():
    with pytest.raises(InputError, match="has no value"):
        query_dialect("-- dialect:\nSELECT 1")


def test_blanked_directive_keeps_error_positions():
    dialect, text = query_dialect("/* dialect: postgres */\nSELECT 1 FORM t")
    assert dialect == "postgres" and len(text.splitlines()[0]) == len("/* dialect: postgres */")
    with pytest.raises(InputError, match=r"\(line 2, column \d+\)"):
        parse(text, dialect=dialect)


# -- through ADBC -----------------------------------------------------------------------


@pytest.fixture
def dial(gateway):  # type: ignore[no-untyped-def]
    """``dial(user, header=…, session=…)``: an ADBC connection with dialect options."""
    opened = []

    def _dial(user: str, *, header: str | None = None, session: str | None = None):  # type: ignore[no-untyped-def]
        db_kwargs = {"username": user, "password": USERS[user][1]}
        if header:
            db_kwargs[HEADER] = header
        conn_kwargs = {SESSION: session} if session else None
        conn = flight_sql.connect(gateway.url, db_kwargs=db_kwargs, conn_kwargs=conn_kwargs,
                                  autocommit=True)
        opened.append(conn)
        return conn

    yield _dial
    for conn in opened:
        conn.close()


def rows(conn, sql):  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall()
    finally:
        cur.close()


def error_of(conn, sql) -> adbc_driver_manager.Error:  # type: ignore[no-untyped-def]
    with pytest.raises(adbc_driver_manager.Error) as info:
        rows(conn, sql)
    return info.value


def direct(gateway, sql):  # type: ignore[no-untyped-def]
    con = duckdb.connect()
    con.execute(f"SET file_search_path = '{gateway.root}'")
    return con.execute(sql).fetchall()


PG_FILTER = ("SELECT site::text AS site, count(*) FILTER (WHERE age > 60) AS old "
             "FROM oncology.screenings GROUP BY 1 ORDER BY 1")


def test_session_option_postgres_keeps_the_row_filter(gateway, dial):
    got = rows(dial("carl", session="postgres"), PG_FILTER)
    want = direct(gateway, "SELECT count(*) FILTER (WHERE age > 60) FROM "
                           "'data/screenings.parquet' WHERE site = 'north'")
    assert got == [("north", want[0][0])]
    assert len(rows(dial("rita", session="postgres"), PG_FILTER)) == 4


def test_connection_header_tsql_top(dial):
    conn = dial("carl", header="tsql")
    got = rows(conn, "SELECT TOP 5 site, age FROM oncology.screenings")
    assert len(got) == 5 and {site for site, _ in got} == {"north"}


@pytest.mark.parametrize(
    ("sql", "check"),
    [
        ("/* dialect: postgres */ SELECT count(*) FROM oncology.screenings "
         "WHERE test ILIKE 'MAMMO%'", lambda r: r[0][0] > 0),
        ("-- dialect: postgres\nSELECT DATE_TRUNC('month', screened_on) AS m, count(*) AS n "
         "FROM oncology.screenings GROUP BY 1 ORDER BY 1 LIMIT 3", lambda r: len(r) == 3),
        ("/* dialect: bigquery */ SELECT site, COUNT(*) AS n FROM `oncology.screenings` "
         "GROUP BY site", lambda r: [s for s, _ in r] == ["north"]),
        ("/* dialect: tsql */ SELECT TOP 3 [site] FROM oncology.screenings",
         lambda r: r == [("north",)] * 3),
        ("/* dialect: mysql */ SELECT `site` FROM oncology.screenings LIMIT 2",
         lambda r: r == [("north",)] * 2),
        ("/* dialect: snowflake */ SELECT SITE FROM ONCOLOGY.SCREENINGS LIMIT 1",
         lambda r: r == [("north",)]),
        ("/* dialect: trino */ SELECT site, approx_distinct(age) AS ages "
         "FROM oncology.screenings GROUP BY site", lambda r: r[0][0] == "north" and r[0][1] > 10),
    ],
)
def test_per_query_dialect_comment_under_the_policy(dial, sql, check):
    result = rows(dial("carl"), sql)
    assert check(result), result


def test_query_comment_beats_session_and_session_beats_header(dial):
    conn = dial("carl", header="tsql", session="postgres")
    assert rows(conn, "SELECT 'a'::text || 'b' AS x") == [("ab",)]  # postgres, not tsql
    assert rows(conn, "/* dialect: tsql */ SELECT TOP 1 site FROM oncology.screenings") == [
        ("north",)]
    conn.adbc_connection.set_options(**{SESSION: "tsql"})
    assert rows(conn, "SELECT TOP 1 site FROM oncology.screenings") == [("north",)]


def test_session_is_per_connection(dial):
    first = dial("carl", session="tsql")
    second = dial("carl")
    assert rows(first, "SELECT TOP 1 site FROM oncology.screenings") == [("north",)]
    assert "INVALID_ARGUMENT" in str(error_of(second, "SELECT TOP 1 site FROM "
                                                      "oncology.screenings"))
    assert first.adbc_connection.get_option("adbc.flight.sql.session.options") == (
        '{"stockade.dialect":"tsql"}')


def test_unknown_dialects_are_invalid_argument_with_a_suggestion(dial):
    err = error_of(dial("carl", header="postgrs"), "SELECT 1")
    assert "INVALID_ARGUMENT" in str(err) and "Did you mean 'postgres'?" in str(err)
    err = error_of(dial("carl"), "/* dialect: tsq */ SELECT 1")
    assert "Did you mean 'tsql'?" in str(err)
    conn = dial("carl")
    with pytest.raises(adbc_driver_manager.Error, match="Did you mean 'snowflake'"):
        conn.adbc_connection.set_options(**{SESSION: "snowflak"})
    with pytest.raises(adbc_driver_manager.Error, match="invalid name"):
        conn.adbc_connection.set_options(
            **{"adbc.flight.sql.session.option.stockade.dialekt": "tsql"})


@pytest.mark.parametrize(
    ("dialect", "sql", "message"),
    [
        ("postgres", "SELECT patient_id FROM oncology.screenings", "Unknown column"),
        ("postgres", "SELECT site FROM oncology.screenings WHERE patient_id::text = '1'",
         "Unknown column"),
        ("bigquery", "SELECT name FROM `secret.salaries`", "not found"),
        ("postgres", "SELECT pg_read_file('/etc/passwd')", "not allowed"),
        ("postgres", "SELECT * FROM pg_catalog.pg_tables", "not found"),
        ("postgres", "SELECT current_setting('data_directory')", "not allowed"),
        ("postgres", "COPY (SELECT 1) TO '/tmp/x'", "refused"),
        ("tsql", "SELECT * FROM OPENROWSET(BULK '/etc/passwd', SINGLE_CLOB) AS x", ""),
        ("tsql", "SELECT * INTO newt FROM oncology.screenings", "refused"),
        ("tsql", "EXEC xp_cmdshell 'id'", ""),
        ("snowflake", "SELECT $1 FROM @mystage", "not found"),
        ("snowflake", "SELECT t.$1 FROM @mystage/file.csv t", "not found"),
        ("mysql", "SELECT LOAD_FILE('/etc/passwd')", "not allowed"),
        ("mysql", "SELECT * FROM oncology.screenings INTO OUTFILE '/tmp/x'", ""),
        ("spark", "SELECT * FROM parquet.`/etc/passwd`", "not found"),
        ("sqlite", "SELECT * FROM sqlite_master", "not found"),
        ("clickhouse", "SELECT * FROM file('/etc/passwd')", ""),
        ("duckdb", "SELECT * FROM read_csv('/etc/passwd')", ""),
    ],
)
def test_attacks_in_other_dialects_are_refused(dial, dialect, sql, message):
    err = str(error_of(dial("carl"), f"/* dialect: {dialect} */ {sql}"))
    assert "INVALID_ARGUMENT" in err, err
    assert message in err
    assert "root:" not in err and "Traceback" not in err


def test_hidden_column_stays_hidden_in_star_from_another_dialect(dial):
    cur = dial("carl", session="postgres").cursor()
    try:
        cur.execute("SELECT * FROM oncology.patients LIMIT 3")
        table = cur.fetch_arrow_table()
    finally:
        cur.close()
    assert "patient_id" not in table.column_names and "zip" not in table.column_names
    assert set(table.column("site").to_pylist()) == {"north"}


def test_query_options_comment_sets_several_options_and_refuses_typos():
    from gateway.dialects import query_options

    options, text = query_options("/* dialect: postgres, epsilon: 0.5 */\nSELECT 1")
    assert options == {"dialect": "postgres", "epsilon": "0.5"}
    assert text.endswith("\nSELECT 1") and "epsilon" not in text
    with pytest.raises(InputError, match="Did you mean 'epsilon'"):
        query_options("/* epsilno: 0.5 */ SELECT 1")
