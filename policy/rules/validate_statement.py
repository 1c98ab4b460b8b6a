"""Refuse anything but one read-only query (security invariant 1)."""

from __future__ import annotations

from sqlglot import exp

from gateway.errors import NotSupportedError, RefusedStatementError
from policy.locate import location

ALLOWED = "Only SELECT queries are allowed (SELECT, WITH … SELECT, UNION, INTERSECT, EXCEPT)"

# Statement kinds that may never appear, at any depth. The root must also be a
# query, so an unknown statement kind is refused too.
_REFUSED_NAMES = (
    "DDL", "DML", "Command", "Pragma", "Set", "SetItem", "Use", "Describe", "Show",
    "Summarize", "Copy", "Export", "Attach", "Detach", "Install", "Load", "Transaction",
    "Commit", "Rollback", "Into", "Analyze", "Kill", "Grant", "Revoke", "Refresh",
    "Cache", "Uncache", "LoadData", "Merge", "Declare", "Execute", "Call", "Create",
    "Drop", "Alter", "AlterColumn", "Insert", "Update", "Delete", "TruncateTable",
    "Comment", "Checkpoint", "Vacuum", "Prepare", "Deallocate", "Reset",
)  # fmt: skip
REFUSED: tuple[type[exp.Expr], ...] = tuple(
    getattr(exp, n) for n in _REFUSED_NAMES if hasattr(exp, n)
)


def _kind(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, exp.Into):
        return "SELECT … INTO"
    return type(node).__name__.upper()


def validate_statement(expression: exp.Expr, **_: object) -> exp.Expr:
    """Return ``expression`` if it is a read-only query, else raise.

    >>> import sqlglot
    >>> try:
    ...     validate_statement(sqlglot.parse_one("DROP TABLE t"))
    ... except RefusedStatementError as err:
    ...     print(err.message[:30])
    DROP statements are refused. O
    """
    for node in expression.walk():
        if isinstance(node, REFUSED):
            kind = node.key.upper() if isinstance(node, (exp.DDL, exp.DML)) else _kind(node)
            line, col = location(node) if node is not expression else (None, None)
            raise RefusedStatementError(
                f"{kind} statements are refused. {ALLOWED}", line=line, col=col
            )
    if not isinstance(expression, exp.Query):
        raise RefusedStatementError(f"{type(expression).__name__.upper()} is refused. {ALLOWED}")
    for with_ in expression.find_all(exp.With):
        if with_.args.get("recursive"):
            # Not analysed: the self-reference would need its own scoping, join and
            # aggregate rules. Refused rather than half-checked.
            raise NotSupportedError(
                "Recursive CTEs are not supported; write the query without WITH RECURSIVE"
            )
    return expression
