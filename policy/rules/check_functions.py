"""Refuse every function that is not on the allow-list (invariant 2).

The allow-list is the built-in one plus the names the policy adds, at the top
level and for the principal's role (``functions: {allow: [...]}``); a function
another role may call is refused like any other.

Messages name the function as the analyst wrote it (``unnest``, not sqlglot's
``explode``), at the first character of its name.
"""

from __future__ import annotations

from sqlglot import exp

from gateway.errors import ForbiddenFunctionError, did_you_mean
from policy.calls import duckdb_call
from policy.functions import allowed_names, function_name, is_allowed
from policy.locate import location
from policy.model import Policy
from policy.principal import Principal


def _name_location(node: exp.Func) -> tuple[int | None, int | None]:
    """Where the name of the call ``node`` starts (sqlglot records where it ends)."""
    line, col = location(node)
    start, end = node.meta.get("start"), node.meta.get("end")
    if (
        not isinstance(node, exp.Anonymous)
        and col is not None
        and node.meta.get("col") == col
        and isinstance(start, int)
        and isinstance(end, int)
    ):
        col = max(col - (end - start), 1)
    return line, col


def check_functions(
    expression: exp.Expr,
    *,
    policy: Policy | None = None,
    principal: Principal | None = None,
    **_: object,
) -> exp.Expr:
    """Raise :class:`ForbiddenFunctionError` for the first function not allowed.

    >>> import sqlglot
    >>> try:
    ...     check_functions(sqlglot.parse_one("SELECT lenght(name)", read="duckdb"))
    ... except ForbiddenFunctionError as err:
    ...     print(err)
    Function 'lenght' is not allowed. Did you mean 'length'? (line 1, column 8)
    >>> try:
    ...     check_functions(sqlglot.parse_one("SELECT gen_random_uuid()", read="duckdb"))
    ... except ForbiddenFunctionError as err:
    ...     print(err)
    Function 'gen_random_uuid' is not allowed (line 1, column 8)
    """
    extra: frozenset[str] = frozenset()
    if policy is not None and principal is not None:
        extra = policy.functions_for(principal.role)
    for node in expression.find_all(exp.Func):
        if is_allowed(node, extra_names=extra):
            _check_part(node)
            continue
        line, col = _name_location(node)
        if isinstance(node, exp.Columns):
            raise ForbiddenFunctionError(
                "COLUMNS(...) is not supported; list the columns you need", line=line, col=col
            )
        name = function_name(node)
        raise ForbiddenFunctionError(
            f"Function '{name}' is not allowed.{did_you_mean(name, allowed_names(extra))}",
            line=line,
            col=col,
        )
    return expression


#: Calls whose first argument names a part of a date (``'year'``, ``'epoch'``, …). DuckDB
#: 1.5.5 fails for every user of the database afterwards when such a part comes from the
#: data and is one it cannot extract from a TIMESTAMPTZ (``'epoch'``: "Unsupported ICU
#: BIGINT extractor", then "database has been invalidated"), so the part is written in
#: the query, in every mode (invariant 9: one request cannot harm others).
DATE_PART_CALLS = frozenset({"date_part", "datepart", "date_diff", "datediff", "date_sub",
                             "datesub", "date_trunc", "datetrunc"})


#: Date parts written as bare words (``date_diff(day, a, b)``); any other bare word is a
#: column.
_PARTS = frozenset("""
    year month day hour minute second millisecond microsecond nanosecond week quarter decade
    century millennium dow doy isodow isoyear epoch era julian timezone timezone_hour
    timezone_minute yearweek dayofweek dayofyear weekday weekofyear dayofmonth
    """.split())


def _check_part(node: exp.Func) -> None:
    """Refuse a date part that is not written in the query (see :data:`DATE_PART_CALLS`).

    >>> import sqlglot
    >>> _check_part(sqlglot.parse_one("date_part('year', ts)", read="duckdb"))
    >>> try:
    ...     _check_part(sqlglot.parse_one("date_part(p, ts)", read="duckdb"))
    ... except ForbiddenFunctionError as err:
    ...     print(err.message.split(";")[0])
    The date part of 'date_part' must be written in the query
    """
    call = duckdb_call(node)
    if call is None or call[0] not in DATE_PART_CALLS or not call[1]:
        return
    part = call[1][0]
    if part is None or (isinstance(part, exp.Literal) and part.is_string) \
            or (isinstance(part, exp.Var) and part.name.lower().rstrip("s") in _PARTS):
        return
    line, col = location(part)
    raise ForbiddenFunctionError(
        f"The date part of '{call[0]}' must be written in the query; a part taken from "
        "the data is not allowed (write e.g. 'year', 'month' or 'day')", line=line, col=col)
