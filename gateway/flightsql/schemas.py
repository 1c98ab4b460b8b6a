"""Result schemas of the Flight SQL metadata commands, and column metadata.

The schemas are exactly the specification's (names, types, nullability): clients
such as ADBC and the JDBC driver check them. :func:`annotate_schema` adds the
``ARROW:FLIGHT:SQL:*`` field metadata that clients show as column details,
and :func:`xdbc_type_info_table` answers GetXdbcTypeInfo. (The LIKE patterns of
GetDbSchemas/GetTables are :mod:`gateway.flightsql.like`'s.)

>>> CATALOGS_SCHEMA
catalog_name: string not null
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

_U = pa.utf8()


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


#: The dense union of GetSqlInfo values, with non-nullable children.
SQL_INFO_VALUE_TYPE = pa.dense_union(
    [
        _f("string_value", _U, False),
        _f("bool_value", pa.bool_(), False),
        _f("bigint_value", pa.int64(), False),
        _f("int32_bitmask", pa.int32(), False),
        _f("string_list", pa.list_(_f("item", _U)), False),
        _f("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())), False),
    ],
    type_codes=[0, 1, 2, 3, 4, 5],
)

SQL_INFO_SCHEMA = pa.schema(
    [_f("info_name", pa.uint32(), False), _f("value", SQL_INFO_VALUE_TYPE, False)]
)

CATALOGS_SCHEMA = pa.schema([_f("catalog_name", _U, False)])

DB_SCHEMAS_SCHEMA = pa.schema([_f("catalog_name", _U), _f("db_schema_name", _U, False)])

TABLES_SCHEMA = pa.schema(
    [
        _f("catalog_name", _U),
        _f("db_schema_name", _U),
        _f("table_name", _U, False),
        _f("table_type", _U, False),
    ]
)

TABLES_SCHEMA_WITH_SCHEMA = TABLES_SCHEMA.append(_f("table_schema", pa.binary(), False))

TABLE_TYPES_SCHEMA = pa.schema([_f("table_type", _U, False)])

PRIMARY_KEYS_SCHEMA = pa.schema(
    [
        _f("catalog_name", _U),
        _f("db_schema_name", _U),
        _f("table_name", _U, False),
        _f("column_name", _U, False),
        _f("key_name", _U),
        _f("key_sequence", pa.int32(), False),
    ]
)

#: GetImportedKeys, GetExportedKeys and GetCrossReference share one schema.
FOREIGN_KEYS_SCHEMA = pa.schema(
    [
        _f("pk_catalog_name", _U),
        _f("pk_db_schema_name", _U),
        _f("pk_table_name", _U, False),
        _f("pk_column_name", _U, False),
        _f("fk_catalog_name", _U),
        _f("fk_db_schema_name", _U),
        _f("fk_table_name", _U, False),
        _f("fk_column_name", _U, False),
        _f("key_sequence", pa.int32(), False),
        _f("fk_key_name", _U),
        _f("pk_key_name", _U),
        _f("update_rule", pa.uint8(), False),
        _f("delete_rule", pa.uint8(), False),
    ]
)

XDBC_TYPE_INFO_SCHEMA = pa.schema(
    [
        _f("type_name", _U, False),
        _f("data_type", pa.int32(), False),
        _f("column_size", pa.int32()),
        _f("literal_prefix", _U),
        _f("literal_suffix", _U),
        _f("create_params", pa.list_(_f("item", _U, False))),
        _f("nullable", pa.int32(), False),
        _f("case_sensitive", pa.bool_(), False),
        _f("searchable", pa.int32(), False),
        _f("unsigned_attribute", pa.bool_()),
        _f("fixed_prec_scale", pa.bool_(), False),
        _f("auto_increment", pa.bool_()),
        _f("local_type_name", _U),
        _f("minimum_scale", pa.int32()),
        _f("maximum_scale", pa.int32()),
        _f("sql_data_type", pa.int32(), False),
        _f("datetime_subcode", pa.int32()),
        _f("num_prec_radix", pa.int32()),
        _f("interval_precision", pa.int32()),
    ]
)

# ---- column metadata ----------------------------------------------------------

_PREFIX = "ARROW:FLIGHT:SQL:"

_INT_PRECISION = {8: 3, 16: 5, 32: 10, 64: 19}


def duckdb_type_name(type_: pa.DataType) -> str:
    """The DuckDB name of an Arrow type, as shown to clients.

    >>> duckdb_type_name(pa.int64()), duckdb_type_name(pa.decimal128(38, 0))
    ('BIGINT', 'DECIMAL(38,0)')
    >>> duckdb_type_name(pa.list_(pa.utf8()))
    'VARCHAR[]'
    """
    t = pa.types
    simple = [
        (t.is_boolean, "BOOLEAN"),
        (t.is_int8, "TINYINT"),
        (t.is_int16, "SMALLINT"),
        (t.is_int32, "INTEGER"),
        (t.is_int64, "BIGINT"),
        (t.is_uint8, "UTINYINT"),
        (t.is_uint16, "USMALLINT"),
        (t.is_uint32, "UINTEGER"),
        (t.is_uint64, "UBIGINT"),
        (t.is_float16, "FLOAT"),
        (t.is_float32, "FLOAT"),
        (t.is_float64, "DOUBLE"),
        (t.is_string, "VARCHAR"),
        (t.is_large_string, "VARCHAR"),
        (t.is_string_view, "VARCHAR"),
        (t.is_binary, "BLOB"),
        (t.is_large_binary, "BLOB"),
        (t.is_binary_view, "BLOB"),
        (t.is_fixed_size_binary, "BLOB"),
        (t.is_date, "DATE"),
        (t.is_time, "TIME"),
        (t.is_null, "NULL"),
        (t.is_interval, "INTERVAL"),
        (t.is_duration, "INTERVAL"),
    ]
    for check, name in simple:
        if check(type_):
            return name
    if t.is_timestamp(type_):
        return "TIMESTAMP WITH TIME ZONE" if type_.tz else "TIMESTAMP"
    if t.is_decimal(type_):
        return f"DECIMAL({type_.precision},{type_.scale})"
    if t.is_list(type_) or t.is_large_list(type_) or t.is_list_view(type_):
        return duckdb_type_name(type_.value_type) + "[]"
    if t.is_fixed_size_list(type_):
        return f"{duckdb_type_name(type_.value_type)}[{type_.list_size}]"
    if t.is_struct(type_):
        inner = ", ".join(f'"{f.name}" {duckdb_type_name(f.type)}' for f in type_)
        return f"STRUCT({inner})"
    if t.is_map(type_):
        return f"MAP({duckdb_type_name(type_.key_type)}, {duckdb_type_name(type_.item_type)})"
    if t.is_dictionary(type_):
        return duckdb_type_name(type_.value_type)
    return str(type_).upper()


def _precision_scale(type_: pa.DataType) -> tuple[int | None, int | None]:
    t = pa.types
    if t.is_decimal(type_):
        return type_.precision, type_.scale
    if t.is_integer(type_):
        return _INT_PRECISION[type_.bit_width], 0
    if t.is_float32(type_):
        return 24, None
    if t.is_float64(type_):
        return 53, None
    if t.is_date(type_):
        return 10, None
    if t.is_timestamp(type_):
        return 26, None
    return None, None


def annotate_schema(
    schema: pa.Schema,
    *,
    catalog: str | None,
    db_schema: str | None,
    table: str | None,
    type_names: Mapping[str, str] | None = None,
) -> pa.Schema:
    """Add the ``ARROW:FLIGHT:SQL:*`` metadata to every field of ``schema``.

    Precedence: values derived from the Arrow type, then metadata the field
    already has, then the arguments (``None`` leaves a key alone).
    ``type_names`` maps column names to the source's type names.

    >>> s = annotate_schema(pa.schema([("age", pa.int32())]), catalog="c",
    ...                     db_schema="s", table="t", type_names=None)
    >>> md = s.field("age").metadata
    >>> md[b"ARROW:FLIGHT:SQL:TYPE_NAME"], md[b"ARROW:FLIGHT:SQL:TABLE_NAME"]
    (b'INTEGER', b't')
    """
    fields = []
    for field in schema:
        precision, scale = _precision_scale(field.type)
        derived = {
            "TYPE_NAME": duckdb_type_name(field.type),
            "IS_AUTO_INCREMENT": "0",
            "IS_CASE_SENSITIVE": "1" if pa.types.is_string(field.type) else "0",
            "IS_READ_ONLY": "1",
            "IS_SEARCHABLE": "1",
        }
        if precision is not None:
            derived["PRECISION"] = str(precision)
        if scale is not None:
            derived["SCALE"] = str(scale)
        md: dict[bytes, bytes] = {(_PREFIX + k).encode(): v.encode() for k, v in derived.items()}
        md.update(field.metadata or {})
        given = {"CATALOG_NAME": catalog, "DB_SCHEMA_NAME": db_schema, "TABLE_NAME": table}
        if type_names and field.name in type_names:
            given["TYPE_NAME"] = type_names[field.name]
        md.update({(_PREFIX + k).encode(): v.encode() for k, v in given.items() if v is not None})
        fields.append(field.with_metadata(md))
    return pa.schema(fields, metadata=schema.metadata)


# ---- XDBC type info -------------------------------------------------------------

# JDBC (java.sql.Types) codes, as in the spec's XdbcDataType enum.
XDBC_CHAR, XDBC_DECIMAL, XDBC_INTEGER, XDBC_SMALLINT, XDBC_FLOAT = 1, 3, 4, 5, 6
XDBC_REAL, XDBC_DOUBLE, XDBC_DATETIME, XDBC_INTERVAL, XDBC_VARCHAR = 7, 8, 9, 10, 12
XDBC_DATE, XDBC_TIME, XDBC_TIMESTAMP = 91, 92, 93
XDBC_VARBINARY, XDBC_BIGINT, XDBC_TINYINT, XDBC_BIT = -3, -5, -6, -7
_SEARCHABLE_BASIC, _SEARCHABLE_FULL, _NULLABLE = 2, 3, 1


def _type_row(
    name: str,
    data_type: int,
    column_size: int | None,
    *,
    prefix: str | None = None,
    suffix: str | None = None,
    params: list[str] | None = None,
    case_sensitive: bool = False,
    searchable: int = _SEARCHABLE_BASIC,
    numeric: bool = False,
    fixed: bool = False,
    scale: tuple[int, int] | None = None,
    sql_data_type: int | None = None,
    subcode: int | None = None,
    radix: int | None = None,
) -> dict[str, object]:
    return {
        "type_name": name,
        "data_type": data_type,
        "column_size": column_size,
        "literal_prefix": prefix,
        "literal_suffix": suffix,
        "create_params": params,
        "nullable": _NULLABLE,
        "case_sensitive": case_sensitive,
        "searchable": searchable,
        "unsigned_attribute": False if numeric else None,
        "fixed_prec_scale": fixed,
        "auto_increment": False if numeric else None,
        "local_type_name": name,
        "minimum_scale": scale[0] if scale else None,
        "maximum_scale": scale[1] if scale else None,
        "sql_data_type": data_type if sql_data_type is None else sql_data_type,
        "datetime_subcode": subcode,
        "num_prec_radix": radix,
        "interval_precision": None,
    }


#: The DuckDB types Stockade exposes, ordered by data_type then type_name.
XDBC_TYPES: list[dict[str, object]] = sorted(
    [
        _type_row("BOOLEAN", XDBC_BIT, 1),
        _type_row("TINYINT", XDBC_TINYINT, 3, numeric=True, scale=(0, 0), radix=10),
        _type_row("SMALLINT", XDBC_SMALLINT, 5, numeric=True, scale=(0, 0), radix=10),
        _type_row("INTEGER", XDBC_INTEGER, 10, numeric=True, scale=(0, 0), radix=10),
        _type_row("BIGINT", XDBC_BIGINT, 19, numeric=True, scale=(0, 0), radix=10),
        _type_row("FLOAT", XDBC_REAL, 24, numeric=True, radix=2),
        _type_row("DOUBLE", XDBC_DOUBLE, 53, numeric=True, radix=2),
        _type_row(
            "DECIMAL",
            XDBC_DECIMAL,
            38,
            params=["precision", "scale"],
            numeric=True,
            fixed=True,
            scale=(0, 38),
            radix=10,
        ),
        _type_row(
            "VARCHAR",
            XDBC_VARCHAR,
            None,
            prefix="'",
            suffix="'",
            case_sensitive=True,
            searchable=_SEARCHABLE_FULL,
        ),
        _type_row("BLOB", XDBC_VARBINARY, None, prefix="'", suffix="'::BLOB"),
        _type_row(
            "DATE",
            XDBC_DATE,
            10,
            prefix="DATE '",
            suffix="'",
            sql_data_type=XDBC_DATETIME,
            subcode=1,
        ),
        _type_row(
            "TIME",
            XDBC_TIME,
            15,
            prefix="TIME '",
            suffix="'",
            sql_data_type=XDBC_DATETIME,
            subcode=2,
        ),
        _type_row(
            "TIMESTAMP",
            XDBC_TIMESTAMP,
            26,
            prefix="TIMESTAMP '",
            suffix="'",
            sql_data_type=XDBC_DATETIME,
            subcode=3,
        ),
        _type_row(
            "TIMESTAMP WITH TIME ZONE",
            XDBC_TIMESTAMP,
            32,
            prefix="TIMESTAMPTZ '",
            suffix="'",
            sql_data_type=XDBC_DATETIME,
            subcode=5,
        ),
        _type_row(
            "INTERVAL",
            XDBC_INTERVAL,
            None,
            prefix="INTERVAL '",
            suffix="'",
            sql_data_type=XDBC_INTERVAL,
            subcode=110,
        ),
    ],
    key=lambda row: (row["data_type"], row["type_name"]),
)


def xdbc_type_info_table(data_type: int | None = None) -> pa.Table:
    """GetXdbcTypeInfo: all exposed types, or those with JDBC code ``data_type``.

    >>> xdbc_type_info_table(4).column("type_name").to_pylist()
    ['INTEGER']
    """
    rows = [r for r in XDBC_TYPES if data_type is None or r["data_type"] == data_type]
    return pa.Table.from_pylist(rows, schema=XDBC_TYPE_INFO_SCHEMA)
