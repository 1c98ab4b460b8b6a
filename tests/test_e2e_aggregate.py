"""End-to-end: aggregate mode through ADBC as ``aud`` (auditor: min_group_size 10)."""

from __future__ import annotations

import re

import adbc_driver_manager
import duckdb
import pytest
from adbc_driver_manager import AdbcStatusCode


def run(conn, sql):  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    try:
        cur.execute(sql)
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


def test_small_groups_are_suppressed_and_the_others_exact(gateway, connect):
    got = run(connect("aud"), "SELECT age, result, count(*) AS n FROM oncology.screenings "
                              "GROUP BY age, result")
    got_rows = sorted(tuple(r.values()) for r in got.to_pylist())
    every = direct(gateway, "SELECT age, result, count(*), count(DISTINCT patient_id) "
                            "FROM 'data/screenings.parquet' GROUP BY age, result")
    big = sorted((age, result, n) for age, result, n, people in every if people >= 10)
    small = [(age, result) for age, result, _, people in every if people < 10]
    assert small and big  # the data has both, or this test would prove nothing
    assert got_rows == big
    assert not {(r[0], r[1]) for r in got_rows} & set(small)


def test_global_count_and_average(gateway, connect):
    got = run(connect("aud"), "SELECT count(*) AS n, avg(age) AS a FROM oncology.screenings")
    want = direct(gateway, "SELECT count(*), avg(age) FROM 'data/screenings.parquet'")
    assert got.column("n")[0].as_py() == want[0][0]
    assert got.column("a")[0].as_py() == pytest.approx(want[0][1])


def test_table_row_filter_still_applies(gateway, connect):
    got = run(connect("aud"), "SELECT site, count(*) AS n FROM oncology.patients GROUP BY site")
    want = direct(gateway, "SELECT site, count(*) FROM 'data/patients.parquet' WHERE consent "
                           "GROUP BY site HAVING count(DISTINCT patient_id) >= 10")
    assert sorted(tuple(r.values()) for r in got.to_pylist()) == sorted(want)


def test_row_level_select_is_refused_with_the_reason(connect):
    err = error_of(connect("aud"), "SELECT site, age FROM oncology.screenings")
    assert err.status_code == AdbcStatusCode.INVALID_ARGUMENT
    assert re.search(re.escape(
        "Table 'oncology.screenings' is in 'aggregate' mode for your role: every output column "
        "must be an aggregate (COUNT, SUM, AVG, …) or a GROUP BY key; groups covering fewer "
        "than 10 people are suppressed"), str(err))
    assert "Traceback" not in str(err)


@pytest.mark.parametrize("sql", [
    "SELECT patient_id FROM oncology.screenings",
    "SELECT count(DISTINCT patient_id) AS n FROM oncology.screenings",
    "SELECT site, count(*) AS n FROM oncology.screenings GROUP BY patient_id, site",
    "SELECT count(*) AS n FROM oncology.screenings WHERE patient_id = 1",
    "SELECT count(__stockade_unit) AS n FROM oncology.screenings",
    "SELECT count(s.__stockade_unit) AS n FROM oncology.screenings s",
    "SELECT {'x': *} AS r FROM oncology.screenings",
    "SELECT #1 FROM oncology.screenings",
    "SELECT max(tumor_size_mm) AS m FROM oncology.screenings",
    "SELECT list(age) AS ages FROM oncology.screenings",
])
def test_hidden_privacy_unit_and_row_values_are_never_readable(connect, sql):
    err = error_of(connect("aud"), sql)
    assert err.status_code == AdbcStatusCode.INVALID_ARGUMENT, str(err)
    assert "Traceback" not in str(err)


def test_result_schema_never_carries_the_unit(connect):
    table = run(connect("aud"), "WITH t AS (SELECT site, count(*) AS n FROM oncology.screenings "
                                "GROUP BY site) SELECT * FROM t")
    assert table.column_names == ["site", "n"]
    assert table.num_rows == 4


def test_catalog_shows_aggregate_tables_with_their_visible_columns(connect):
    objects = connect("aud").adbc_get_objects().read_all().to_pylist()
    schemas = {s["db_schema_name"]: s for s in objects[0]["catalog_db_schemas"]}
    assert set(schemas) == {"oncology"}
    tables = {t["table_name"]: t for t in schemas["oncology"]["db_schema_tables"]}
    columns = [c["column_name"] for c in tables["screenings"]["table_columns"]]
    assert "patient_id" not in columns and "site" in columns
    assert not any(c.startswith("__stockade") for c in columns)
