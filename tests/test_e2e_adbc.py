"""End-to-end: the domain gateway through the real ADBC Flight SQL driver."""

from __future__ import annotations

import adbc_driver_manager
import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from adbc_driver_manager import AdbcStatusCode

pytestmark = pytest.mark.filterwarnings(
    # pandas warns that an ADBC connection is not a SQLAlchemy connectable.
    "ignore:pandas only supports SQLAlchemy:UserWarning",
)


def run(conn, sql, params=None):  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()
    finally:
        cur.close()


def error_of(conn, sql):  # type: ignore[no-untyped-def]
    with pytest.raises(adbc_driver_manager.Error) as info:
        run(conn, sql)
    return info.value


def direct(gateway, sql):  # type: ignore[no-untyped-def]
    con = duckdb.connect()
    con.execute(f"SET file_search_path = '{gateway.root}'")
    return con.execute(sql).fetchall()


def test_query_matches_duckdb(gateway, connect):
    conn = connect("rita")
    got = run(conn, "SELECT site, count(*) AS n, avg(age) AS mean_age FROM oncology.screenings "
                    "GROUP BY site ORDER BY site").to_pylist()
    want = direct(gateway, "SELECT site, count(*), avg(age) FROM 'data/screenings.parquet' "
                           "GROUP BY site ORDER BY site")
    assert [(r["site"], r["n"], pytest.approx(r["mean_age"])) for r in got] == want


def test_three_part_name_and_join(gateway, connect):
    conn = connect("rita")
    got = run(conn, "SELECT count(*) AS n FROM st_marys.oncology.screenings s "
                    "JOIN oncology.patients p USING (site) WHERE p.sex = 'F' AND s.age > 80")
    assert got.column("n")[0].as_py() > 0


def test_hidden_column_absent_from_star_and_refused_by_name(connect):
    conn = connect("rita")
    table = run(conn, "SELECT * FROM oncology.screenings LIMIT 5")
    assert "patient_id" not in table.column_names
    assert table.num_rows == 5
    err = error_of(conn, "SELECT patient_id FROM oncology.screenings")
    assert err.status_code == AdbcStatusCode.INVALID_ARGUMENT
    assert "Unknown column 'patient_id'" in str(err)
    assert "Traceback" not in str(err)


def test_mask_applies(connect):
    zips = run(connect("rita"), "SELECT DISTINCT zip FROM oncology.patients").column("zip")
    assert len(zips) > 10
    assert all(len(z) == 5 and z.endswith("**") for z in zips.to_pylist())


def test_row_filters(gateway, connect):
    rita = run(connect("rita"), "SELECT count(*) AS n FROM oncology.patients")
    assert rita.column("n")[0].as_py() == direct(
        gateway, "SELECT count(*) FROM 'data/patients.parquet' WHERE consent")[0][0]
    carl = run(connect("carl"), "SELECT DISTINCT site FROM oncology.screenings")
    assert carl.column("site").to_pylist() == ["north"]


def test_get_objects_shows_exactly_the_permitted_catalog(connect):
    objects = connect("rita").adbc_get_objects().read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["st_marys"]
    schemas = {s["db_schema_name"]: s for s in objects[0]["catalog_db_schemas"]}
    assert set(schemas) == {"oncology", "registry", "bulk"}
    tables = {t["table_name"]: t for t in schemas["oncology"]["db_schema_tables"]}
    assert set(tables) == {"patients", "screenings"}
    columns = [c["column_name"] for c in tables["patients"]["table_columns"]]
    assert "patient_id" not in columns and "zip" in columns

    carl = connect("carl").adbc_get_objects().read_all().to_pylist()
    carl_schemas = {s["db_schema_name"]: s for s in carl[0]["catalog_db_schemas"]}
    assert set(carl_schemas) == {"oncology"}
    carl_tables = {t["table_name"]: t for t in carl_schemas["oncology"]["db_schema_tables"]}
    carl_columns = [c["column_name"] for c in carl_tables["patients"]["table_columns"]]
    assert "zip" not in carl_columns and "patient_id" not in carl_columns


def test_table_schema_matches_query(connect):
    conn = connect("rita")
    schema = conn.adbc_get_table_schema("screenings", catalog_filter="st_marys",
                                        db_schema_filter="oncology")
    result = run(conn, "SELECT * FROM oncology.screenings LIMIT 1")
    assert schema.names == result.schema.names
    assert [f.type for f in schema] == [f.type for f in result.schema]


def test_prepared_statement_with_parameters(gateway, connect):
    conn = connect("rita")
    got = run(conn, "SELECT count(*) AS n FROM oncology.screenings WHERE site = ? AND age > ?",
              ("north", 60))
    want = direct(gateway, "SELECT count(*) FROM 'data/screenings.parquet' "
                           "WHERE site = 'north' AND age > 60")
    assert got.column("n")[0].as_py() == want[0][0]
    cur = conn.cursor()
    for site in ("south", "east"):
        cur.execute("SELECT count(*) AS n FROM oncology.screenings WHERE site = ?", (site,))
        n = cur.fetch_arrow_table().column("n")[0].as_py()
        assert n == direct(gateway, "SELECT count(*) FROM 'data/screenings.parquet' "
                                    f"WHERE site = '{site}'")[0][0]
    cur.close()


def test_parameters_cannot_widen_a_row_filter(connect):
    # The clinician's row filter stays in force whatever the bound value says.
    got = run(connect("carl"), "SELECT count(*) AS n FROM oncology.screenings WHERE site = ?",
              ("south",))
    assert got.column("n")[0].as_py() == 0


def test_pandas_and_polars_over_adbc(connect):
    conn = connect("rita")
    frame = pd.read_sql("SELECT code, name FROM registry.regions ORDER BY code", conn)
    assert frame["code"].tolist() == ["east", "north", "south", "west"]
    df = pl.read_database("SELECT code, label FROM registry.codes ORDER BY code", conn)
    assert df["label"].to_list() == ["C0", "C1", "C2", "C3", "C4"]


def test_every_connector_format(connect):
    conn = connect("rita")
    assert run(conn, "SELECT count(*) AS n FROM registry.events").column("n")[0].as_py() == 10
    assert run(conn, "SELECT count(*) AS n FROM registry.codes").column("n")[0].as_py() == 5
    assert run(conn, "SELECT job FROM registry.staff LIMIT 1").column("job")[0].as_py() == "nurse"
    assert run(conn, "SELECT beds FROM registry.regions WHERE code = 'north'").column(
        "beds")[0].as_py() == 1200


def test_wrong_password_is_unauthenticated(gateway):
    with pytest.raises(adbc_driver_manager.Error) as info:
        conn = gateway.connect("rita", "not-the-password")
        try:
            run(conn, "SELECT 1")
        finally:
            conn.close()
    assert info.value.status_code == AdbcStatusCode.UNAUTHENTICATED
    assert "Wrong user name or password" in str(info.value)
    assert "Traceback" not in str(info.value)


def test_denied_table_looks_like_a_missing_table(connect):
    conn = connect("rita")
    denied = error_of(conn, "SELECT * FROM secret.salaries")
    missing = error_of(conn, "SELECT * FROM secret.wages")
    assert denied.status_code == missing.status_code == AdbcStatusCode.INVALID_ARGUMENT
    assert str(denied).replace("salaries", "X") == str(missing).replace("wages", "X")
    assert "not found" in str(denied)


@pytest.mark.parametrize("sql, words", [
    ("CREATE TABLE t AS SELECT 1", "SELECT"),
    ("DROP TABLE oncology.screenings", "SELECT"),
    ("INSERT INTO oncology.screenings VALUES (1)", "SELECT"),
    ("ATTACH '/tmp/x.db' AS x", "SELECT"),
    ("COPY oncology.screenings TO '/tmp/out.csv'", "SELECT"),
    ("PRAGMA database_list", "SELECT"),
    ("SET threads = 1", "SELECT"),
    ("INSTALL httpfs", "SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("SELECT * FROM '/etc/passwd'", "not found"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT getenv('HOME')", "getenv"),
    ("SELECT * FROM duckdb_tables()", "duckdb_tables"),
    ("SELECT * FROM information_schema.tables", "not found"),
])
def test_refused_statements(connect, sql, words):
    err = error_of(connect("rita"), sql)
    assert err.status_code == AdbcStatusCode.INVALID_ARGUMENT, str(err)
    assert words.lower() in str(err).lower()
    assert "Traceback" not in str(err)


def test_syntax_error_has_line_and_column(connect):
    err = error_of(connect("rita"), "SELECT site\nFROM oncology.screenings\nWHERE age >")
    assert err.status_code == AdbcStatusCode.INVALID_ARGUMENT
    assert "line 3" in str(err)


def test_value_of_a_failed_cast_is_not_in_the_error(connect):
    err = error_of(connect("rita"), "SELECT CAST(test AS INTEGER) FROM oncology.screenings")
    assert "mammography" not in str(err) and "colonoscopy" not in str(err)
    assert "psa" not in str(err) and "cervical" not in str(err)


def test_role_row_limit_caps_results(connect):
    assert run(connect("carl"), "SELECT * FROM oncology.screenings").num_rows == 100
    small = run(connect("carl"), "SELECT * FROM oncology.screenings LIMIT 7")
    assert small.num_rows == 7


def test_prepared_statement_reports_parameter_types(gateway):
    import adbc_driver_manager as dm
    conn = gateway.connect("rita")
    try:
        stmt = dm.AdbcStatement(conn.adbc_connection)
        stmt.set_sql_query("SELECT count(*) FROM oncology.screenings WHERE age > ? AND site = ?")
        stmt.prepare()
        schema = pa_schema(stmt.get_parameter_schema())
        assert [f.type for f in schema] == [pa.int32(), pa.string()]
        stmt.close()
    finally:
        conn.close()


def pa_schema(handle):  # type: ignore[no-untyped-def]
    return pa.Schema._import_from_c_capsule(handle.__arrow_c_schema__())


def test_secret_masks_pseudonymise_and_never_leak(connect):
    import hashlib

    from tests.conftest import TEST_SALT

    conn = connect("rita")
    ids = run(conn, "SELECT id FROM registry.staff ORDER BY id").column("id").to_pylist()
    assert sorted(ids) == sorted(hashlib.sha256(f"{TEST_SALT}{i}".encode()).hexdigest()
                                 for i in range(3))
    for sql in ("SELECT CAST(id AS INTEGER) FROM registry.staff",
                "SELECT id::DATE FROM registry.staff",
                "SELECT * FROM registry.staff WHERE id = 1"):
        try:
            run(conn, sql)
        except adbc_driver_manager.Error as err:
            assert TEST_SALT not in str(err)
