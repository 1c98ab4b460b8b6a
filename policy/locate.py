"""Where a node came from in the analyst's SQL text (1-based line and column)."""

from __future__ import annotations

from sqlglot import exp


def location(node: exp.Expr) -> tuple[int | None, int | None]:
    """The line and column sqlglot recorded for ``node`` or its first identifier.

    >>> import sqlglot
    >>> location(sqlglot.parse_one("SELECT\\n  x", read="duckdb").expressions[0])
    (2, 3)
    """
    for candidate in (node, node.args.get("this")):
        if isinstance(candidate, exp.Expr):
            line, col = candidate.meta.get("line"), candidate.meta.get("col")
            if isinstance(line, int) and isinstance(col, int):
                if isinstance(candidate, exp.Anonymous):
                    col = col - len(candidate.name) + 1
                elif isinstance(candidate, exp.Identifier):
                    col = col - len(candidate.name) + 1 - (2 if candidate.quoted else 0)
                return line, max(col, 1)
    for child in node.find_all(exp.Identifier):
        line, col = child.meta.get("line"), child.meta.get("col")
        if isinstance(line, int) and isinstance(col, int):
            return line, max(col - len(child.name) + 1 - (2 if child.quoted else 0), 1)
    return None, None
