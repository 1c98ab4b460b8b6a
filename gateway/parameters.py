"""The types of a query's ``?`` parameters, for clients that ask before binding.

DuckDB does not report the types of prepared-statement parameters, and JDBC
clients build their parameter vectors from the schema the server sends. We infer
each placeholder's type from what it is compared with (``col = ?``, ``? BETWEEN a
AND b``, ``col IN (?, ?)``, ``col LIKE ?``); a parameter with nothing to compare with
gets Arrow's ``null`` type, which clients read as "any".
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike,
                exp.NullSafeEQ, exp.NullSafeNEQ, exp.Add, exp.Sub, exp.Mul, exp.Div)


def _known(node: exp.Expr | None) -> str | None:
    if node is None or node.type is None:
        return None
    if node.type.this in (exp.DataType.Type.UNKNOWN, exp.DataType.Type.NULL):
        return None
    return node.type.sql(dialect="duckdb")


def placeholder_types(
    expression: exp.Expr, schema: dict[str, dict[str, dict[str, str]]]
) -> list[str | None]:
    """DuckDB type names of the placeholders, in SQL order (None = unknown).

    >>> import sqlglot
    >>> e = sqlglot.parse_one("SELECT * FROM d.t WHERE t.x > ? AND t.y IN (?, ?) AND ? < 3",
    ...                       read="duckdb")
    >>> placeholder_types(e, {"d": {"t": {"x": "BIGINT", "y": "VARCHAR"}}})
    ['BIGINT', 'TEXT', 'TEXT', 'INT']
    """
    annotated = annotate_types(expression.copy(), schema=dict(schema), dialect="duckdb")
    types: list[str | None] = []
    for node in annotated.find_all(exp.Placeholder, bfs=False):
        parent = node.parent
        found: str | None = None
        if isinstance(parent, _COMPARISONS):
            other = parent.expression if parent.this is node else parent.this
            found = _known(other)
        elif isinstance(parent, exp.Between):
            if parent.this is node:
                found = _known(parent.args.get("low")) or _known(parent.args.get("high"))
            else:
                found = _known(parent.this)
        elif isinstance(parent, exp.In) and parent.this is not node:
            found = _known(parent.this)
        types.append(found)
    return types
