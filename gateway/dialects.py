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
from collections.abc import Sequence

from gateway.errors import InputError, did_you_mean
from policy.rules.parse import DIALECTS

DEFAULT_DIALECT = "duckdb"
#: The call header that sets a connection's dialect (ADBC:
#: ``adbc.flight.sql.rpc.call_header.x-stockade-dialect``).
DIALECT_HEADER = "x-stockade-dialect"
#: The Flight SQL session option that sets a session's dialect (ADBC:
#: ``adbc.flight.sql.session.option.stockade.dialect``).
DIALECT_OPTION = "stockade.dialect"

#: The header and session option that set a connection's or session's ε per query
#: for ``dp`` tables (ADBC: ``adbc.flight.sql.rpc.call_header.x-stockade-epsilon`` or
#: ``adbc.flight.sql.session.option.stockade.epsilon``).
EPSILON_HEADER = "x-stockade-epsilon"
EPSILON_OPTION = "stockade.epsilon"
#: The call header a network node sends on the parts of a federated query it asks a
#: domain for: ``true`` releases a ``dp`` answer's noisy parts unclamped (counts
#: neither rounded nor made non-negative, variances not made non-negative), so that
#: the network clamps once, after merging the domains (see ``DpPlan.unclamped``).
#: The parts are as private as the clamped answer and cost the same.
DP_PARTS_HEADER = "x-stockade-dp-parts"
#: What a leading options comment may set: ``/* dialect: postgres; epsilon: 0.5 */``.
QUERY_OPTIONS = ("dialect", "epsilon", "delta")

# The first comment of the text, if the text starts with one.
_LEADING_COMMENT = re.compile(r"\A\s*(?:/\*(?P<block>.*?)\*/|--(?P<line>[^\r\n]*))", re.DOTALL)
_OPTION = re.compile(r"\A\s*(?P<key>[A-Za-z_]+)\s*:(?P<value>.*)\Z", re.DOTALL)


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


def query_options(sql: str) -> tuple[dict[str, str], str]:
    """The options a leading comment sets, and ``sql`` with that comment blanked.

    A leading comment is an options comment when every part of it (split on
    ``;`` or ``,``) reads ``key: value``; a misspelt key is an error. The comment
    is blanked out with spaces (newlines kept), so that line and column numbers
    in error messages still point into the text as sent.

    >>> query_options("/* dialect: postgres; epsilon: 0.5 */ SELECT 1")[0]
    {'dialect': 'postgres', 'epsilon': '0.5'}
    >>> query_options("/* just a comment */ SELECT 1")
    ({}, '/* just a comment */ SELECT 1')
    """
    options, end = leading_options(sql)
    return options, re.sub(r"[^\r\n]", " ", sql[:end]) + sql[end:]


def leading_options(sql: str, known: Sequence[str] = QUERY_OPTIONS
                    ) -> tuple[dict[str, str], int]:
    """The options of ``sql``'s leading options comment (keys from ``known``), and where
    that comment ends (0 without one); see :func:`query_options`."""
    match = _LEADING_COMMENT.match(sql)
    if match is None:
        return {}, 0
    body = match.group("block") if match.group("block") is not None else match.group("line")
    parts = [p for p in re.split(r"[;,]", body) if p.strip()]
    found = [_OPTION.match(p) for p in parts]
    if not parts or not all(found):
        return {}, 0
    options: dict[str, str] = {}
    for item in found:
        assert item is not None
        key, value = item.group("key").lower(), item.group("value").strip()
        if key not in known:
            raise InputError(
                f"Unknown query option '{key}'.{did_you_mean(key, known)} "
                f"Options: {', '.join(known)}."
            )
        if not value:
            raise InputError(f"The query option '{key}' has no value; write /* {key}: … */")
        options[key] = value
    return options, match.end()


def query_dialect(sql: str) -> tuple[str | None, str]:
    """The dialect a leading options comment names, and ``sql`` without the comment.

    >>> query_dialect("-- dialect: spark\\nSELECT 1")
    ('spark', '                 \\nSELECT 1')
    >>> query_dialect("/* just a comment */ SELECT 1")
    (None, '/* just a comment */ SELECT 1')
    """
    options, text = query_options(sql)
    name = options.get("dialect")
    return (check_dialect(name) if name else None), text


def check_epsilon(value: object, *, what: str = "ε") -> float:
    """A per-query ε (or δ) given as an option: a positive finite number.

    >>> check_epsilon("0.25")
    0.25
    """
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, e.g. 0.5, not {value!r}") from None
    if not (0 < number < float("inf")):
        raise InputError(f"{what} must be a positive number, not {value!r}")
    return number


def check_flag(value: object, *, what: str) -> bool:
    """A yes/no header or option: ``true``/``false`` (also ``1``/``0``, ``yes``/``no``).

    >>> check_flag("True", what=DP_PARTS_HEADER), check_flag("0", what=DP_PARTS_HEADER)
    (True, False)
    >>> check_flag("maybe", what=DP_PARTS_HEADER)
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: x-stockade-dp-parts takes true or false, not 'maybe'
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise InputError(f"{what} takes true or false, not {value!r}")


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
