"""Refuse every function that is not on the allow-list (invariant 2)."""

from __future__ import annotations

from sqlglot import exp

from gateway.errors import ForbiddenFunctionError, did_you_mean
from policy.functions import allowed_names, function_name, is_allowed
from policy.locate import location


def check_functions(expression: exp.Expr, **_: object) -> exp.Expr:
    """Raise :class:`ForbiddenFunctionError` for the first function not allowed.

    >>> import sqlglot
    >>> try:
    ...     check_functions(sqlglot.parse_one("SELECT lenght(name)", read="duckdb"))
    ... except ForbiddenFunctionError as err:
    ...     print(err)
    Function 'lenght' is not allowed. Did you mean 'length'? (line 1, column 8)
    """
    for node in expression.find_all(exp.Func):
        if is_allowed(node):
            continue
        line, col = location(node)
        if isinstance(node, exp.Columns):
            raise ForbiddenFunctionError(
                "COLUMNS(...) is not supported; list the columns you need", line=line, col=col
            )
        name = function_name(node)
        raise ForbiddenFunctionError(
            f"Function '{name}' is not allowed.{did_you_mean(name, allowed_names())}",
            line=line,
            col=col,
        )
    return expression
