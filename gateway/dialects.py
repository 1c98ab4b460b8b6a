"""Which SQL dialect a query is written in.

An analyst may write SQL in any dialect sqlglot reads (``postgres``, ``trino``,
``spark``, ``bigquery``, ``snowflake``, ``mysql``, ``tsql``, ...); the gateway
transpiles it to DuckDB before the policy runs. They say which dialect in one of
three ways, the most specific winning:

1. per query, with a leading comment: ``/* dialect: postgres */ SELECT ...`` or
   ``-- dialect: postgres`` on the first line;
2. per session, with the Flight SQL session option ``stockade.dialect``;
3. per connection, with the call header ``x-stockade-dialect``;

and otherwise the SQL is DuckDB's.

>>> resolve_dialect("/* dialect: tsql */ SELECT TOP 1 x FROM t", session="postgres")
('tsql', '                    SELECT TOP 1 x FROM t')
>>> resolve_dialect("SELECT 1", session=None, connection="Postgres")
('postgres', 'SELECT 1')
>>> resolve_dialect("SELECT 1")
('duckdb', 'SELECT 1')
>>> check_dialect("postgresql")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gateway.errors.InputError: Unknown SQL dialect 'postgresql'. Did you mean 'postgres'? ...
"""

from __future__ import annotations

import re

from gateway.errors import InputError, did_you_mean
from policy.rules.parse import DIALECTS

DEFAULT_DIALECT = "duckdb"
#: The call header that sets a connection's dialect (ADBC:
#: ``adbc.flight.sql.rpc.call_header.x-stockade-dialect``).
DIALECT_HEADER = "x-stockade-dialect"
#: The Flight SQL session option that sets a session's dialect (ADBC:
#: ``adbc.flight.sql.session.option.stockade.dialect``).
DIALECT_OPTION = "stockade.dialect"

# The first comment of the text, if the text starts with one.
_LEADING_COMMENT = re.compile(r"\A\s*(?:/\*(?P<block>.*?)\*/|--(?P<line>[^\r\n]*))", re.DOTALL)
_DIRECTIVE = re.compile(r"\s*dialect\s*:(?P<name>.*)\Z", re.DOTALL | re.IGNORECASE)


def check_dialect(name: str) -> str:
    """The canonical name of dialect ``name`` (case-insensitive); input error if unknown.

    >>> check_dialect(" TSQL ")
    'tsql'
    """
    canonical = name.strip().lower()
    if canonical not in DIALECTS:
        raise InputError(
            f"Unknown SQL dialect '{name.strip()}'.{did_you_mean(canonical, DIALECTS)} "
            f"Known dialects: {', '.join(DIALECTS)}."
        )
    return canonical


def query_dialect(sql: str) -> tuple[str | None, str]:
    """The dialect a leading ``dialect:`` comment names, and ``sql`` without it.

    The comment is blanked out with spaces (newlines kept), so that line and
    column numbers in error messages still point into the text as sent.

    >>> query_dialect("-- dialect: spark\\nSELECT 1")
    ('spark', '                 \\nSELECT 1')
    >>> query_dialect("/* just a comment */ SELECT 1")
    (None, '/* just a comment */ SELECT 1')
    """
    match = _LEADING_COMMENT.match(sql)
    if match is None:
        return None, sql
    body = match.group("block") if match.group("block") is not None else match.group("line")
    directive = _DIRECTIVE.match(body)
    if directive is None:
        return None, sql
    name = directive.group("name").strip()
    if not name:
        raise InputError("The dialect comment names no dialect; write /* dialect: postgres */")
    blank = re.sub(r"[^\r\n]", " ", sql[: match.end()])
    return check_dialect(name), blank + sql[match.end():]


def resolve_dialect(
    sql: str, *, session: str | None = None, connection: str | None = None
) -> tuple[str, str]:
    """``(dialect, sql)``: the query's own dialect, else the session's, else the connection's.

    The returned SQL has the dialect comment (if any) blanked out.
    """
    found, text = query_dialect(sql)
    if found is not None:
        return found, text
    for given in (session, connection):
        if given:
            return check_dialect(given), text
    return DEFAULT_DIALECT, text
