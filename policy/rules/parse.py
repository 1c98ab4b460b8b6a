"""Parse the analyst's SQL into exactly one sqlglot expression."""

from __future__ import annotations

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

from gateway.errors import NotSupportedError, SqlSyntaxError, did_you_mean

DIALECTS = tuple(sorted(d.value for d in sqlglot.Dialects if d.value))


def parse(sql: str, *, dialect: str = "duckdb") -> exp.Expr:
    """Parse ``sql`` (written in ``dialect``) into one statement.

    >>> parse("select 1 as one").sql("duckdb")
    'SELECT 1 AS one'
    >>> parse("SELECT 1; DROP TABLE t")
    Traceback (most recent call last):
    ...
    gateway.errors.SqlSyntaxError: Send exactly one statement; found 2 (line 1, column 11)
    """
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
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        raise SqlSyntaxError("The query is empty; send one SELECT statement")
    if len(statements) > 1:
        line, col = _second_statement_location(sql, dialect)
        raise SqlSyntaxError(
            f"Send exactly one statement; found {len(statements)}", line=line, col=col
        )
    return statements[0]


def _second_statement_location(sql: str, dialect: str) -> tuple[int | None, int | None]:
    """Line and column of the first token after the first ``;``."""
    seen_semicolon = False
    for token in Dialect.get_or_raise(dialect).tokenize(sql):
        if token.token_type == TokenType.SEMICOLON:
            seen_semicolon = True
        elif seen_semicolon:
            return token.line, max(token.col - len(token.text) + 1, 1)
    return None, None
