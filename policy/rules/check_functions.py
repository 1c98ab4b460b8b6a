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
