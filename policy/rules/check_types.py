"""Refuse every type that is not one of DuckDB's own (invariant 2).

DuckDB looks a type name up in every catalog the engine has attached, and the engine
attaches the owner's sources (a DuckDB file, a PostgreSQL database) to read them. A
cast to ``CAST(x AS src.main.mood)`` would reach an object of a source, outside the
analyst's catalog: an ENUM type, whose name lists values of a protected column
(``typeof(CAST(NULL AS src.main.mood))`` returns them), and DuckDB's "did you mean"
names the catalog it found it in. So types are on an allow-list, as functions are:
DuckDB's built-in types and their aliases (sqlglot knows most of them by class; the
others it keeps as user-defined names, which must then be built-in DuckDB names).
"""

from __future__ import annotations

from sqlglot import exp

from gateway.errors import SqlError, did_you_mean
from policy.functions import duckdb_type_names
from policy.locate import location


def _located(node: exp.Expr) -> tuple[int | None, int | None]:
    """Where ``node`` or the nearest enclosing node that sqlglot located starts."""
    current: exp.Expr | None = node
    while current is not None:
        line, col = location(current)
        if line is not None:
            return line, col
        current = current.parent
    return None, None


def check_types(expression: exp.Expr, **_: object) -> exp.Expr:
    """Raise :class:`SqlError` for the first type that is not a built-in DuckDB type.

    >>> import sqlglot
    >>> tree = sqlglot.parse_one("SELECT CAST(x AS hugeint), x::varint, x::INT[] FROM t",
    ...                          read="duckdb")
    >>> check_types(tree) is tree
    True
    >>> try:
    ...     check_types(sqlglot.parse_one("SELECT CAST(x AS src.main.mood) FROM t",
    ...                                   read="duckdb"))
    ... except SqlError as err:
    ...     print(err)
    Type 'src.main.mood' is not a DuckDB type. Use a built-in type such as VARCHAR, \
BIGINT, DOUBLE, DATE or TIMESTAMP (line 1, column 13)
    >>> try:
    ...     check_types(sqlglot.parse_one("SELECT x::bigintt FROM t", read="duckdb"))
    ... except SqlError as err:
    ...     print(err)
    Type 'bigintt' is not a DuckDB type. Did you mean 'bigint'? Use a built-in type such \
as VARCHAR, BIGINT, DOUBLE, DATE or TIMESTAMP (line 1, column 8)
    """
    for node in expression.find_all(exp.DataType):
        if node.this != exp.DataType.Type.USERDEFINED:
            continue
        name = str(node.args.get("kind") or "")
        if "." not in name and name.lower() in duckdb_type_names():
            continue
        line, col = _located(node)
        hint = did_you_mean(name, duckdb_type_names()) if "." not in name else ""
        raise SqlError(f"Type '{name}' is not a DuckDB type.{hint} Use a built-in type such "
                       "as VARCHAR, BIGINT, DOUBLE, DATE or TIMESTAMP", line=line, col=col)
    return expression
