"""Cap the number of result rows."""

from __future__ import annotations

from sqlglot import exp


def _literal_int(node: exp.Expr | None) -> int | None:
    """The row count of a plain ``LIMIT n``; None for anything else.

    ``LIMIT n PERCENT`` and ``WITH TIES`` are not row counts: such limits are
    wrapped like any other non-literal limit.
    """
    if isinstance(node, exp.Limit):
        options = node.args.get("limit_options")
        if options is not None and (options.args.get("percent") or options.args.get("rows")
                                    or options.args.get("with_ties")):
            return None
        node = node.expression
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    return None


def enforce_limits(
    expression: exp.Expr, *, max_rows: int | None = None, **_: object
) -> exp.Expr:
    """Add ``LIMIT max_rows`` (keeping a smaller literal limit), wrapping if needed.

    >>> import sqlglot
    >>> enforce_limits(sqlglot.parse_one("SELECT a FROM t LIMIT 5"), max_rows=10).sql()
    'SELECT a FROM t LIMIT 5'
    >>> enforce_limits(sqlglot.parse_one("SELECT a FROM t LIMIT 50"), max_rows=10).sql()
    'SELECT a FROM t LIMIT 10'
    >>> enforce_limits(sqlglot.parse_one("SELECT a FROM t LIMIT ?"), max_rows=10).sql()
    'SELECT * FROM (SELECT a FROM t LIMIT ?) AS "_limited" LIMIT 10'
    >>> enforce_limits(sqlglot.parse_one("SELECT a FROM t LIMIT 5 PERCENT", read="duckdb"),
    ...                max_rows=10).sql("duckdb")
    'SELECT * FROM (SELECT a FROM t LIMIT 5 PERCENT) AS "_limited" LIMIT 10'
    """
    if max_rows is None:
        return expression
    if not isinstance(expression, exp.Query):
        return expression
    limit = expression.args.get("limit")
    fetch = expression.args.get("fetch")
    if fetch is None and (limit is None or _literal_int(limit) is not None):
        current = _literal_int(limit)
        if current is None or current > max_rows:
            expression.set("limit", exp.Limit(expression=exp.Literal.number(max_rows)))
        return expression
    wrapped = exp.select("*").from_(expression.subquery(exp.to_identifier("_limited", quoted=True)))
    return wrapped.limit(max_rows)
