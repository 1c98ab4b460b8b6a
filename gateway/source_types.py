"""Source columns as analysts see them: no column type that carries values of the data.

A DuckDB ``ENUM`` type names every value it may take (``ENUM('flu', 'rare disease')``),
and DuckDB prints type names wherever it describes a value: in binder errors (``No
function matches '+(ENUM('flu', 'rare disease'), INTEGER_LITERAL)'``), in ``typeof()``,
in ``DESCRIBE``. A rare value of a protected column would reach every analyst who may
name the column, in every mode, errors included (invariant 5). So every relation the
engine serves — its views and tables, and the bounded ``dp`` snapshots — reads ENUM
columns (nested ones too) as ``VARCHAR``: same values, a type that names none of them.

ENUMs come from DuckDB database files, for one (Arrow dictionaries, as frames and IPC
files bring them, become VARCHAR when the engine copies them anyway).

>>> import duckdb
>>> con = duckdb.connect()
>>> _ = con.execute("CREATE TABLE t AS SELECT CAST('b' AS ENUM('a', 'b')) AS e, 1 AS n")
>>> select = plain_select(con, "SELECT * FROM t")
>>> select
'SELECT * REPLACE (CAST("e" AS VARCHAR) AS "e") FROM (SELECT * FROM t)'
>>> con.execute(f"SELECT typeof(e), e, n FROM ({select})").fetchall()
[('VARCHAR', 'b', 1)]
"""

from __future__ import annotations

import re

import duckdb

from connectors._sql import identifier

_QUOTED = r"'(?:[^']|'')*'"
_ENUM = re.compile(rf"ENUM\((?:{_QUOTED}(?:, {_QUOTED})*)?\)")


def plain_type(type_name: str) -> str:
    """``type_name`` (as DuckDB prints it) with every ENUM in it made ``VARCHAR``.

    >>> plain_type("ENUM('a', 'it''s (x)')")
    'VARCHAR'
    >>> plain_type("STRUCT(k ENUM('x'), n INTEGER)[]")
    'STRUCT(k VARCHAR, n INTEGER)[]'
    >>> plain_type("DECIMAL(18,3)")
    'DECIMAL(18,3)'
    """
    return _ENUM.sub("VARCHAR", type_name)


def plain_select(con: duckdb.DuckDBPyConnection, select: str) -> str:
    """``select`` reading its ENUM columns as ``VARCHAR`` (``select`` itself if it has none).

    ``con`` must be able to describe ``select`` (its sources attached).
    """
    casts = []
    for name, type_name, *_ in con.execute(f"DESCRIBE {select}").fetchall():
        plain = plain_type(str(type_name))
        if plain != type_name:
            casts.append(f"CAST({identifier(str(name))} AS {plain}) AS {identifier(str(name))}")
    if not casts:
        return select
    return f"SELECT * REPLACE ({', '.join(casts)}) FROM ({select})"
