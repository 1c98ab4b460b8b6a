"""Metadata schemas, column annotations and the SqlInfo table (LIKE patterns: test_like.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gateway.errors import NotFoundError
from gateway.flightsql import schemas
from gateway.flightsql.sqlinfo import (
    DEFAULT_SQL_INFO,
    INFO_MEMBERS,
    SqlInfo,
    member_of,
    sql_info_table,
)
from gateway.flightsql.statements import PreparedStatements


def test_annotate_schema_precedence() -> None:
    prefix = b"ARROW:FLIGHT:SQL:"
    field = pa.field("zip", pa.utf8(), metadata={prefix + b"TYPE_NAME": b"CHAR(5)"})
    schema = pa.schema([field, pa.field("n", pa.decimal128(12, 3))], metadata={b"k": b"v"})
    out = schemas.annotate_schema(schema, catalog="c", db_schema="s", table="t", type_names=None)
    assert out.metadata == {b"k": b"v"}
    zip_md = out.field("zip").metadata
    assert zip_md[prefix + b"TYPE_NAME"] == b"CHAR(5)"  # kept from the field
    assert zip_md[prefix + b"IS_CASE_SENSITIVE"] == b"1"
    assert zip_md[prefix + b"CATALOG_NAME"] == b"c"
    n_md = out.field("n").metadata
    assert (n_md[prefix + b"PRECISION"], n_md[prefix + b"SCALE"]) == (b"12", b"3")
    named = schemas.annotate_schema(
        schema, catalog=None, db_schema=None, table=None, type_names={"zip": "TEXT"}
    )
    assert named.field("zip").metadata[prefix + b"TYPE_NAME"] == b"TEXT"
    assert prefix + b"CATALOG_NAME" not in named.field("zip").metadata


def test_xdbc_type_info() -> None:
    table = schemas.xdbc_type_info_table()
    assert table.schema.equals(schemas.XDBC_TYPE_INFO_SCHEMA)
    names = set(table.column("type_name").to_pylist())
    assert {"VARCHAR", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "DOUBLE", "FLOAT",
            "BOOLEAN", "DATE", "TIMESTAMP", "DECIMAL", "BLOB"} <= names  # fmt: skip
    codes, names_ = table.column("data_type").to_pylist(), table.column("type_name").to_pylist()
    keys = list(zip(codes, names_, strict=True))
    assert keys == sorted(keys)
    assert schemas.xdbc_type_info_table(93).column("type_name").to_pylist() == [
        "TIMESTAMP", "TIMESTAMP WITH TIME ZONE"
    ]  # fmt: skip
    assert schemas.xdbc_type_info_table(1234).num_rows == 0


def test_sql_info_types_per_id() -> None:
    table = sql_info_table(DEFAULT_SQL_INFO, [])
    assert table.schema.equals(schemas.SQL_INFO_SCHEMA)
    table.validate(full=True)
    union = table.column("value").combine_chunks()
    for row, info_id in enumerate(table.column("info_name").to_pylist()):
        assert union.type_codes[row].as_py() == INFO_MEMBERS[info_id]
    convert = sql_info_table(DEFAULT_SQL_INFO, [SqlInfo.SQL_SUPPORTS_CONVERT])
    mapping = dict(convert.column("value")[0].as_py())
    assert 19 in mapping[0]  # BIGINT converts to VARCHAR


def test_sql_info_custom_and_unknown_ids() -> None:
    info = {**DEFAULT_SQL_INFO, 10_000: "custom", 10_001: 7, 10_002: ["a"]}
    table = sql_info_table(info, [10_000, 10_001, 10_002, 9_999, 0, 0])
    assert table.column("info_name").to_pylist() == [10_000, 10_001, 10_002, 0]
    assert table.column("value").to_pylist() == ["custom", 7, ["a"], "Stockade"]
    with pytest.raises(TypeError, match="cannot type"):
        member_of(10_003, object())


def test_prepared_statement_store() -> None:
    store = PreparedStatements(max_per_owner=2)
    empty = pa.schema([])
    a, b, c = (store.create("ann", f"SELECT {i}", empty, empty) for i in range(3))
    assert store.count("ann") == 2
    with pytest.raises(NotFoundError):
        store.get("ann", a)  # evicted, oldest first
    assert store.get("ann", c).query == "SELECT 2"
    with pytest.raises(NotFoundError, match="Prepared statement not found"):
        store.close("bob", b)
    store.bind("ann", b, pa.record_batch({"p": [1]}))
    assert store.get("ann", b).parameters.num_rows == 1
    store.close("ann", b)
    store.close("ann", c)
    assert store.count("ann") == 0
