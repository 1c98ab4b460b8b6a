"""The GetSqlInfo table: what a Flight SQL client learns about the server.

Each info id has one member of the spec's dense union (string, bool, int64,
int32 bitmask, string list, int32 → int32-list map); :data:`INFO_MEMBERS` says
which, and :func:`sql_info_table` types every Python value accordingly. The
JDBC driver reads about 80 ids and casts each to the member the spec names, so
the table is exact about it (ids 541-562 are int64, bitmasks and ordinals
int32). :data:`DEFAULT_SQL_INFO` describes a read-only DuckDB-backed server.

>>> table = sql_info_table(DEFAULT_SQL_INFO, [SqlInfo.FLIGHT_SQL_SERVER_NAME,
...                                            SqlInfo.FLIGHT_SQL_SERVER_READ_ONLY])
>>> table.column("info_name").to_pylist(), table.column("value").to_pylist()
([0, 3], ['Stockade', True])
>>> all(not f.nullable for f in table.schema.field("value").type)
True
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from importlib import metadata

import pyarrow as pa

from gateway.flightsql.schemas import SQL_INFO_SCHEMA, SQL_INFO_VALUE_TYPE


class SqlInfo(enum.IntEnum):
    """The info ids of the Flight SQL specification (``SqlInfo`` enum)."""

    FLIGHT_SQL_SERVER_NAME = 0
    FLIGHT_SQL_SERVER_VERSION = 1
    FLIGHT_SQL_SERVER_ARROW_VERSION = 2
    FLIGHT_SQL_SERVER_READ_ONLY = 3
    FLIGHT_SQL_SERVER_SQL = 4
    FLIGHT_SQL_SERVER_SUBSTRAIT = 5
    FLIGHT_SQL_SERVER_SUBSTRAIT_MIN_VERSION = 6
    FLIGHT_SQL_SERVER_SUBSTRAIT_MAX_VERSION = 7
    FLIGHT_SQL_SERVER_TRANSACTION = 8
    FLIGHT_SQL_SERVER_CANCEL = 9
    FLIGHT_SQL_SERVER_BULK_INGESTION = 10
    FLIGHT_SQL_SERVER_INGEST_TRANSACTIONS_SUPPORTED = 11
    FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT = 100
    FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT = 101
    SQL_DDL_CATALOG = 500
    SQL_DDL_SCHEMA = 501
    SQL_DDL_TABLE = 502
    SQL_IDENTIFIER_CASE = 503
    SQL_IDENTIFIER_QUOTE_CHAR = 504
    SQL_QUOTED_IDENTIFIER_CASE = 505
    SQL_ALL_TABLES_ARE_SELECTABLE = 506
    SQL_NULL_ORDERING = 507
    SQL_KEYWORDS = 508
    SQL_NUMERIC_FUNCTIONS = 509
    SQL_STRING_FUNCTIONS = 510
    SQL_SYSTEM_FUNCTIONS = 511
    SQL_DATETIME_FUNCTIONS = 512
    SQL_SEARCH_STRING_ESCAPE = 513
    SQL_EXTRA_NAME_CHARACTERS = 514
    SQL_SUPPORTS_COLUMN_ALIASING = 515
    SQL_NULL_PLUS_NULL_IS_NULL = 516
    SQL_SUPPORTS_CONVERT = 517
    SQL_SUPPORTS_TABLE_CORRELATION_NAMES = 518
    SQL_SUPPORTS_DIFFERENT_TABLE_CORRELATION_NAMES = 519
    SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY = 520
    SQL_SUPPORTS_ORDER_BY_UNRELATED = 521
    SQL_SUPPORTED_GROUP_BY = 522
    SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE = 523
    SQL_SUPPORTS_NON_NULLABLE_COLUMNS = 524
    SQL_SUPPORTED_GRAMMAR = 525
    SQL_ANSI92_SUPPORTED_LEVEL = 526
    SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY = 527
    SQL_OUTER_JOINS_SUPPORT_LEVEL = 528
    SQL_SCHEMA_TERM = 529
    SQL_PROCEDURE_TERM = 530
    SQL_CATALOG_TERM = 531
    SQL_CATALOG_AT_START = 532
    SQL_SCHEMAS_SUPPORTED_ACTIONS = 533
    SQL_CATALOGS_SUPPORTED_ACTIONS = 534
    SQL_SUPPORTED_POSITIONED_COMMANDS = 535
    SQL_SELECT_FOR_UPDATE_SUPPORTED = 536
    SQL_STORED_PROCEDURES_SUPPORTED = 537
    SQL_SUPPORTED_SUBQUERIES = 538
    SQL_CORRELATED_SUBQUERIES_SUPPORTED = 539
    SQL_SUPPORTED_UNIONS = 540
    SQL_MAX_BINARY_LITERAL_LENGTH = 541
    SQL_MAX_CHAR_LITERAL_LENGTH = 542
    SQL_MAX_COLUMN_NAME_LENGTH = 543
    SQL_MAX_COLUMNS_IN_GROUP_BY = 544
    SQL_MAX_COLUMNS_IN_INDEX = 545
    SQL_MAX_COLUMNS_IN_ORDER_BY = 546
    SQL_MAX_COLUMNS_IN_SELECT = 547
    SQL_MAX_COLUMNS_IN_TABLE = 548
    SQL_MAX_CONNECTIONS = 549
    SQL_MAX_CURSOR_NAME_LENGTH = 550
    SQL_MAX_INDEX_LENGTH = 551
    SQL_DB_SCHEMA_NAME_LENGTH = 552
    SQL_MAX_PROCEDURE_NAME_LENGTH = 553
    SQL_MAX_CATALOG_NAME_LENGTH = 554
    SQL_MAX_ROW_SIZE = 555
    SQL_MAX_ROW_SIZE_INCLUDES_BLOBS = 556
    SQL_MAX_STATEMENT_LENGTH = 557
    SQL_MAX_STATEMENTS = 558
    SQL_MAX_TABLE_NAME_LENGTH = 559
    SQL_MAX_TABLES_IN_SELECT = 560
    SQL_MAX_USERNAME_LENGTH = 561
    SQL_DEFAULT_TRANSACTION_ISOLATION = 562
    SQL_TRANSACTIONS_SUPPORTED = 563
    SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS = 564
    SQL_DATA_DEFINITION_CAUSES_TRANSACTION_COMMIT = 565
    SQL_DATA_DEFINITIONS_IN_TRANSACTIONS_IGNORED = 566
    SQL_SUPPORTED_RESULT_SET_TYPES = 567
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_UNSPECIFIED = 568
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_FORWARD_ONLY = 569
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_SENSITIVE = 570
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_INSENSITIVE = 571
    SQL_BATCH_UPDATES_SUPPORTED = 572
    SQL_SAVEPOINTS_SUPPORTED = 573
    SQL_NAMED_PARAMETERS_SUPPORTED = 574
    SQL_LOCATORS_UPDATE_COPY = 575
    SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED = 576


# Union members, by type code (the order of the spec's dense union).
STRING, BOOL, BIGINT, INT32, STRING_LIST, INT32_MAP = range(6)
MEMBER_NAMES = tuple(f.name for f in SQL_INFO_VALUE_TYPE)

_STRING_IDS = (0, 1, 2, 6, 7, 504, 513, 514, 529, 530, 531)
_BOOL_IDS = (
    3, 4, 5, 9, 10, 11, 500, 501, 502, 506, 515, 516, 518, 519, 520, 521, 523, 524, 527,
    532, 536, 537, 539, 556, 563, 565, 566, 572, 573, 574, 575, 576,
)  # fmt: skip
_INT32_IDS = (
    8, 100, 101, 503, 505, 507, 522, 525, 526, 528, 533, 534, 535, 538, 540, 564,
    567, 568, 569, 570, 571,
)  # fmt: skip
_BIGINT_IDS = tuple(range(541, 563))  # 541-562, as the JDBC driver reads them
_STRING_LIST_IDS = (508, 509, 510, 511, 512)

#: The union member of every info id of the spec.
INFO_MEMBERS: dict[int, int] = {
    **{i: STRING for i in _STRING_IDS},
    **{i: BOOL for i in _BOOL_IDS},
    **{i: INT32 for i in _INT32_IDS},
    **{i: BIGINT for i in _BIGINT_IDS},
    **{i: STRING_LIST for i in _STRING_LIST_IDS},
    SqlInfo.SQL_SUPPORTS_CONVERT: INT32_MAP,
}


def _bits(*positions: int) -> int:
    """An int32 bitmask with the given enum ordinals set.

    >>> _bits(0, 1)
    3
    """
    mask = 0
    for p in positions:
        mask |= 1 << p
    return mask


def _version() -> str:
    try:
        return metadata.version("stockade")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.1.0"


# SqlSupportsConvert ordinals
_C_BIGINT, _C_BINARY, _C_BIT, _C_CHAR, _C_DATE, _C_DECIMAL, _C_FLOAT, _C_INTEGER = range(8)
_C_LONGVARBINARY, _C_LONGVARCHAR, _C_NUMERIC, _C_REAL, _C_SMALLINT = 10, 11, 12, 13, 14
_C_TIME, _C_TIMESTAMP, _C_TINYINT, _C_VARBINARY, _C_VARCHAR = 15, 16, 17, 18, 19
_NUMERIC = [_C_BIGINT, _C_BIT, _C_DECIMAL, _C_FLOAT, _C_INTEGER, _C_NUMERIC, _C_REAL,
            _C_SMALLINT, _C_TINYINT]  # fmt: skip
_TEXT = [_C_CHAR, _C_LONGVARCHAR, _C_VARCHAR]
_BINARY = [_C_BINARY, _C_LONGVARBINARY, _C_VARBINARY]

# What DuckDB's CAST accepts, in SqlSupportsConvert terms.
_CONVERSIONS: dict[int, list[int]] = {
    **{t: sorted(_NUMERIC + _TEXT) for t in _NUMERIC},
    **{t: sorted(_NUMERIC + _TEXT + [_C_DATE, _C_TIME, _C_TIMESTAMP] + _BINARY) for t in _TEXT},
    **{t: sorted(_BINARY + _TEXT) for t in _BINARY},
    _C_DATE: sorted(_TEXT + [_C_DATE, _C_TIMESTAMP]),
    _C_TIME: sorted(_TEXT + [_C_TIME]),
    _C_TIMESTAMP: sorted(_TEXT + [_C_DATE, _C_TIME, _C_TIMESTAMP]),
}

#: The info table of a read-only, DuckDB-backed Stockade server. Subclasses of
#: the server copy it and update entries (e.g. the function lists of the policy).
DEFAULT_SQL_INFO: dict[int, object] = {
    SqlInfo.FLIGHT_SQL_SERVER_NAME: "Stockade",
    SqlInfo.FLIGHT_SQL_SERVER_VERSION: _version(),
    SqlInfo.FLIGHT_SQL_SERVER_ARROW_VERSION: pa.__version__,
    SqlInfo.FLIGHT_SQL_SERVER_READ_ONLY: True,
    SqlInfo.FLIGHT_SQL_SERVER_SQL: True,
    SqlInfo.FLIGHT_SQL_SERVER_SUBSTRAIT: False,
    SqlInfo.FLIGHT_SQL_SERVER_TRANSACTION: 0,  # SQL_SUPPORTED_TRANSACTION_NONE
    SqlInfo.FLIGHT_SQL_SERVER_CANCEL: False,
    SqlInfo.FLIGHT_SQL_SERVER_BULK_INGESTION: False,
    SqlInfo.FLIGHT_SQL_SERVER_INGEST_TRANSACTIONS_SUPPORTED: False,
    SqlInfo.FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT: 0,
    SqlInfo.FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT: 0,
    SqlInfo.SQL_DDL_CATALOG: False,
    SqlInfo.SQL_DDL_SCHEMA: False,
    SqlInfo.SQL_DDL_TABLE: False,
    # DuckDB folds neither quoted nor unquoted identifiers and compares them
    # case-insensitively: SQL_CASE_SENSITIVITY_CASE_INSENSITIVE.
    SqlInfo.SQL_IDENTIFIER_CASE: 1,
    SqlInfo.SQL_IDENTIFIER_QUOTE_CHAR: '"',
    SqlInfo.SQL_QUOTED_IDENTIFIER_CASE: 1,
    SqlInfo.SQL_ALL_TABLES_ARE_SELECTABLE: True,
    SqlInfo.SQL_NULL_ORDERING: 3,  # SQL_NULLS_SORTED_AT_END (DuckDB: NULLS LAST)
    SqlInfo.SQL_KEYWORDS: (
        "ANTI ASOF ATTACH COLUMNS COPY DESCRIBE EXCLUDE EXPORT GLOB ILIKE INSTALL LIMIT "
        "LOAD MACRO OFFSET PIVOT POSITIONAL PRAGMA QUALIFY REPLACE RETURNING SAMPLE SEMI "
        "SIMILAR STRUCT SUMMARIZE UNPIVOT USING"
    ).split(),
    SqlInfo.SQL_NUMERIC_FUNCTIONS: (
        "ABS ACOS ASIN ATAN ATAN2 CBRT CEIL CEILING COS COT DEGREES EXP FLOOR GREATEST "
        "LEAST LN LOG LOG10 LOG2 MOD PI POW POWER RADIANS ROUND SIGN SIN SQRT TAN TRUNC"
    ).split(),
    SqlInfo.SQL_STRING_FUNCTIONS: (
        "ASCII CHR CONCAT CONCAT_WS CONTAINS ENDS_WITH INSTR LCASE LEFT LENGTH LOWER LPAD "
        "LTRIM POSITION REGEXP_MATCHES REGEXP_REPLACE REPEAT REPLACE REVERSE RIGHT RPAD "
        "RTRIM SPLIT_PART STARTS_WITH STRPOS SUBSTR SUBSTRING TRIM UCASE UPPER"
    ).split(),
    SqlInfo.SQL_SYSTEM_FUNCTIONS: ["COALESCE", "IFNULL", "NULLIF"],
    SqlInfo.SQL_DATETIME_FUNCTIONS: (
        "CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP DATE_ADD DATE_DIFF DATE_PART "
        "DATE_SUB DATE_TRUNC DAYNAME DAYOFMONTH DAYOFWEEK DAYOFYEAR EXTRACT HOUR LAST_DAY "
        "MAKE_DATE MINUTE MONTH MONTHNAME NOW QUARTER SECOND STRFTIME STRPTIME WEEK YEAR"
    ).split(),
    SqlInfo.SQL_SEARCH_STRING_ESCAPE: "\\",
    SqlInfo.SQL_EXTRA_NAME_CHARACTERS: "",
    SqlInfo.SQL_SUPPORTS_COLUMN_ALIASING: True,
    SqlInfo.SQL_NULL_PLUS_NULL_IS_NULL: True,
    SqlInfo.SQL_SUPPORTS_CONVERT: _CONVERSIONS,
    SqlInfo.SQL_SUPPORTS_TABLE_CORRELATION_NAMES: True,
    SqlInfo.SQL_SUPPORTS_DIFFERENT_TABLE_CORRELATION_NAMES: False,
    SqlInfo.SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY: True,
    SqlInfo.SQL_SUPPORTS_ORDER_BY_UNRELATED: True,
    SqlInfo.SQL_SUPPORTED_GROUP_BY: _bits(0, 1),  # UNRELATED, BEYOND_SELECT
    SqlInfo.SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE: True,
    SqlInfo.SQL_SUPPORTS_NON_NULLABLE_COLUMNS: True,
    SqlInfo.SQL_SUPPORTED_GRAMMAR: _bits(0, 1),  # MINIMUM, CORE
    SqlInfo.SQL_ANSI92_SUPPORTED_LEVEL: _bits(0, 1),  # ENTRY, INTERMEDIATE
    SqlInfo.SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY: False,
    SqlInfo.SQL_OUTER_JOINS_SUPPORT_LEVEL: 2,  # SQL_FULL_OUTER_JOINS
    SqlInfo.SQL_SCHEMA_TERM: "schema",
    SqlInfo.SQL_PROCEDURE_TERM: "procedure",
    SqlInfo.SQL_CATALOG_TERM: "catalog",
    SqlInfo.SQL_CATALOG_AT_START: True,
    SqlInfo.SQL_SCHEMAS_SUPPORTED_ACTIONS: 0,
    SqlInfo.SQL_CATALOGS_SUPPORTED_ACTIONS: 0,
    SqlInfo.SQL_SUPPORTED_POSITIONED_COMMANDS: 0,
    SqlInfo.SQL_SELECT_FOR_UPDATE_SUPPORTED: False,
    SqlInfo.SQL_STORED_PROCEDURES_SUPPORTED: False,
    # comparisons, EXISTS, IN, quantified (ANY/ALL)
    SqlInfo.SQL_SUPPORTED_SUBQUERIES: _bits(0, 1, 2, 3),
    SqlInfo.SQL_CORRELATED_SUBQUERIES_SUPPORTED: True,
    SqlInfo.SQL_SUPPORTED_UNIONS: _bits(0, 1),  # UNION, UNION ALL
    # 0 means "no limit or unknown" for all the SQL_MAX_* values.
    **{i: 0 for i in range(541, 562)},
    SqlInfo.SQL_DEFAULT_TRANSACTION_ISOLATION: 0,  # SQL_TRANSACTION_NONE
    SqlInfo.SQL_TRANSACTIONS_SUPPORTED: False,
    SqlInfo.SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS: 0,
    SqlInfo.SQL_DATA_DEFINITION_CAUSES_TRANSACTION_COMMIT: False,
    SqlInfo.SQL_DATA_DEFINITIONS_IN_TRANSACTIONS_IGNORED: False,
    SqlInfo.SQL_SUPPORTED_RESULT_SET_TYPES: _bits(1),  # FORWARD_ONLY
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_UNSPECIFIED: 0,
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_FORWARD_ONLY: _bits(1),  # READ_ONLY
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_SENSITIVE: 0,
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_INSENSITIVE: 0,
    SqlInfo.SQL_BATCH_UPDATES_SUPPORTED: False,
    SqlInfo.SQL_SAVEPOINTS_SUPPORTED: False,
    SqlInfo.SQL_NAMED_PARAMETERS_SUPPORTED: False,
    SqlInfo.SQL_LOCATORS_UPDATE_COPY: False,
    SqlInfo.SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED: False,
}


def member_of(info_id: int, value: object) -> int:
    """The union member (type code) for ``value`` under ``info_id``.

    Ids of the spec use the member the spec names; other ids (custom ones,
    10,000 and up) are typed from the Python value.

    >>> member_of(541, 0), member_of(503, 1), member_of(20000, ["a"])
    (2, 3, 4)
    """
    if info_id in INFO_MEMBERS:
        return INFO_MEMBERS[info_id]
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return BIGINT
    if isinstance(value, str):
        return STRING
    if isinstance(value, Mapping):
        return INT32_MAP
    if isinstance(value, Sequence):
        return STRING_LIST
    raise TypeError(f"SqlInfo {info_id}: cannot type a value of {type(value).__name__}")


def sql_info_table(info: Mapping[int, object], ids: Sequence[int]) -> pa.Table:
    """The GetSqlInfo answer for ``ids`` (all of ``info`` when ``ids`` is empty).

    Ids the server does not know are left out, as the spec allows. The union's
    children are non-nullable, as clients (ADBC, JDBC) expect.
    """
    wanted = sorted(info) if not ids else [i for i in dict.fromkeys(ids) if i in info]
    children: list[list[object]] = [[] for _ in MEMBER_NAMES]
    type_ids: list[int] = []
    offsets: list[int] = []
    for info_id in wanted:
        value = info[info_id]
        member = member_of(info_id, value)
        if member == INT32_MAP:
            value = list(dict(value).items())  # type: ignore[call-overload]
        elif member == STRING_LIST:
            value = list(value)  # type: ignore[call-overload]
        type_ids.append(member)
        offsets.append(len(children[member]))
        children[member].append(value)
    arrays = [
        pa.array(values, type=field.type)
        for values, field in zip(children, SQL_INFO_VALUE_TYPE, strict=True)
    ]
    union = pa.Array.from_buffers(
        SQL_INFO_VALUE_TYPE,
        len(wanted),
        [
            None,
            pa.py_buffer(bytes(pa.array(type_ids, pa.int8()).buffers()[1] or b"")),
            pa.py_buffer(bytes(pa.array(offsets, pa.int32()).buffers()[1] or b"")),
        ],
        children=arrays,
    )
    names = pa.array(wanted, pa.uint32())
    return pa.Table.from_arrays([names, union], schema=SQL_INFO_SCHEMA)
