"""Parse the analyst's SQL into exactly one sqlglot expression, within the size limits.

The text is bounded before it is parsed and the tree after (invariant 9): the
planner's cost grows with the number of nodes, and faster than linearly with
their depth (sqlglot's scope analysis walks from each column up to the root), so
:func:`parse` refuses a tree past ``max_query_nodes`` or ``max_query_depth``
(:class:`gateway.limits.RequestLimits`) before any rule sees it. A text nested
deeper than sqlglot's recursive parser can follow is refused the same way.
"""

from __future__ import annotations

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

from gateway.errors import NotSupportedError, SqlError, SqlSyntaxError, did_you_mean
from gateway.limits import RequestLimits
from policy.locate import location

DIALECTS = tuple(sorted(d.value for d in sqlglot.Dialects if d.value))
DEFAULT_LIMITS = RequestLimits()
_SPLIT_HINT = ("write long AND/OR chains of comparisons as IN (...) lists, or split the "
               "query")


def parse(sql: str, *, dialect: str = "duckdb", limits: RequestLimits | None = None) -> exp.Expr:
    """Parse ``sql`` (written in ``dialect``) into one statement, within ``limits``.

    >>> parse("select 1 as one").sql("duckdb")
    'SELECT 1 AS one'
    >>> parse("SELECT 1; DROP TABLE t")
    Traceback (most recent call last):
    ...
    gateway.errors.SqlSyntaxError: Send exactly one statement; found 2 (line 1, column 11)
    >>> parse("SELECT a FROM t WHERE " + " AND ".join(["a > 1"] * 5),
    ...       limits=RequestLimits(max_query_depth=4))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gateway.errors.SqlError: The query's expressions nest more than 4 levels deep; ...
    """
    limits = limits or DEFAULT_LIMITS
    limits.check_query(sql)
    if dialect not in DIALECTS:
        raise NotSupportedError(
            f"Unknown SQL dialect '{dialect}'.{did_you_mean(dialect, DIALECTS)} "
            f"Known dialects: {', '.join(DIALECTS)}"
        )
    if not sql or not sql.strip():
        raise SqlSyntaxError("The query is empty; send one SELECT statement")
    try:
        parsed = sqlglot.parse(sql, read=dialect)
    except ParseError as err:
        first = err.errors[0] if err.errors else {}
        description = str(first.get("description") or "Invalid SQL")
        highlight = first.get("highlight")
        if highlight:
            description += f" near '{highlight}'"
        line, col = first.get("line"), first.get("col")
        raise SqlSyntaxError(
            description,
            line=line if isinstance(line, int) else None,
            col=col if isinstance(col, int) else None,
            highlight=str(highlight) if highlight else None,
        ) from None
    except TokenError as err:
        raise SqlSyntaxError(f"Cannot read the SQL text: {err}") from None
    except RecursionError:
        raise SqlSyntaxError(
            "The query nests parentheses, functions or operators too deeply to be read; "
            + _SPLIT_HINT) from None
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        raise SqlSyntaxError("The query is empty; send one SELECT statement")
    if len(statements) > 1:
        line, col = _second_statement_location(sql, dialect)
        raise SqlSyntaxError(
            f"Send exactly one statement; found {len(statements)}", line=line, col=col
        )
    check_tree(statements[0], limits)
    return _as_placeholders(statements[0])


def _as_placeholders(expression: exp.Expr) -> exp.Expr:
    """Every parameter as a :class:`sqlglot.exp.Placeholder`, whatever the dialect's spelling.

    Dialects read ``$1``, ``$name`` or ``@name`` as ``Parameter`` nodes; DuckDB's
    ``?``, ``$1``, ``$name`` and ``:name`` are placeholders already.

    >>> [p.this for p in _as_placeholders(sqlglot.parse_one(
    ...     "SELECT $1, $min_age", read="postgres")).find_all(exp.Placeholder)]
    ['1', 'min_age']
    """
    for node in list(expression.find_all(exp.Parameter)):
        name = node.this
        if set(node.args) - {"this"} or not isinstance(name, exp.Literal | exp.Var):
            continue
        if isinstance(name, exp.Literal) and (name.is_string or not name.name.isdigit()):
            continue
        placeholder = exp.Placeholder(this=name.name)
        placeholder.meta.update(node.meta)
        node.replace(placeholder)
    return expression


def check_tree(expression: exp.Expr, limits: RequestLimits) -> None:
    """Refuse a tree with more than ``max_query_nodes`` nodes or deeper than ``max_query_depth``.

    Iterative (no recursion), and it stops at the first node past a limit.

    >>> check_tree(sqlglot.parse_one("SELECT a, b, c"), RequestLimits(max_query_nodes=5))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gateway.errors.SqlError: The query has more than 5 expression nodes; ...
    """
    nodes = 0
    stack: list[tuple[exp.Expr, int]] = [(expression, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_query_nodes:
            raise SqlError(
                f"The query has more than {limits.max_query_nodes} expression nodes; this "
                f"server plans queries of up to {limits.max_query_nodes}. Split it into "
                "smaller queries, or ask the operator to raise max_query_nodes.")
        if depth > limits.max_query_depth:
            line, col = location(node)
            raise SqlError(
                f"The query's expressions nest more than {limits.max_query_depth} levels "
                f"deep; {_SPLIT_HINT} (or ask the operator to raise max_query_depth)",
                line=line, col=col)
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def _second_statement_location(sql: str, dialect: str) -> tuple[int | None, int | None]:
    """Line and column of the first token after the first ``;``."""
    seen_semicolon = False
    for token in Dialect.get_or_raise(dialect).tokenize(sql):
        if token.token_type == TokenType.SEMICOLON:
            seen_semicolon = True
        elif seen_semicolon:
            return token.line, max(token.col - len(token.text) + 1, 1)
    return None, None
