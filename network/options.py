"""A network query's options: dialect, ε, δ and partial results.

As at a domain (:mod:`gateway.dialects`), a query may start with an options
comment; the network also reads ``partial_results`` there. The most specific
setting wins: the query's comment, then the session option
(``stockade.dialect``, ``stockade.epsilon``, ``stockade.partial_results``), then
the connection's header (``x-stockade-dialect``, ``x-stockade-epsilon``,
``x-stockade-partial-results``).

>>> o = parse_options("/* partial_results: true; epsilon: 0.5 */ SELECT 1")
>>> o.values
{'partial_results': 'true', 'epsilon': '0.5'}
>>> o.for_domain
'/* epsilon: 0.5 */                        SELECT 1'
>>> o.blank
'                                          SELECT 1'
>>> parse_options("/* partial: yes */ SELECT 1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gateway.errors.InputError: Unknown query option 'partial'. Did you mean 'partial_results'? ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.dialects import (
    DEFAULT_DIALECT,
    DIALECT_HEADER,
    DIALECT_OPTION,
    EPSILON_HEADER,
    EPSILON_OPTION,
    check_dialect,
    check_epsilon,
    leading_options,
)
from gateway.errors import InputError

PARTIAL_OPTION = "stockade.partial_results"
PARTIAL_HEADER = "x-stockade-partial-results"
#: What a leading options comment may set at the network.
QUERY_OPTIONS = ("dialect", "epsilon", "delta", "partial_results")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class QueryOptions:
    """The options comment of one query.

    ``values`` are the comment's options; ``for_domain`` is the query as a domain
    gets it (the comment without ``partial_results``, padded so that every line
    and column stays where the analyst wrote it); ``blank`` is the query with the
    comment blanked out.
    """

    values: dict[str, str]
    for_domain: str
    blank: str


def parse_options(sql: str) -> QueryOptions:
    """Read the leading options comment of ``sql``, if it has one."""
    values, end = leading_options(sql, QUERY_OPTIONS)
    if not end:
        return QueryOptions({}, sql, sql)
    head, rest = sql[:end], sql[end:]
    blank = re.sub(r"[^\r\n]", " ", head)
    if "partial_results" not in values:
        return QueryOptions(values, sql, blank + rest)
    kept = [f"{k}: {v}" for k, v in values.items() if k != "partial_results"]
    comment = f"/* {'; '.join(kept)} */" if kept else ""
    if "\n" in head or "\r" in head or len(comment) > len(head):
        # A comment over several lines: blank out its partial_results part in place.
        for_domain = _without_partial(head) + rest
    else:
        for_domain = comment.ljust(len(head)) + rest
    return QueryOptions(values, for_domain, blank + rest)


def _without_partial(head: str) -> str:
    return re.sub(r"partial_results\s*:[^;,*\r\n]*[;,]?",
                  lambda m: re.sub(r"[^\r\n]", " ", m.group(0)), head, flags=re.I)


def as_bool(value: object, what: str) -> bool:
    """A yes/no option's value.

    >>> as_bool("True", "partial_results"), as_bool(0, "x")
    (True, False)
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(f"{what} takes true or false, not {value!r}")


@dataclass(frozen=True)
class Resolved:
    """The options in force for one query."""

    dialect: str
    epsilon: float | None
    delta: float | None
    partial: bool


def resolve(options: QueryOptions, session: Mapping[str, object],
            headers: Mapping[str, str | None]) -> Resolved:
    """The query's options: its comment, else the session's, else the connection's."""
    values = options.values
    dialect_given = values.get("dialect") or session.get(DIALECT_OPTION) or headers.get(
        DIALECT_HEADER)
    dialect = check_dialect(str(dialect_given)) if dialect_given else DEFAULT_DIALECT
    epsilon_given = values.get("epsilon") or session.get(EPSILON_OPTION) or headers.get(
        EPSILON_HEADER)
    epsilon = check_epsilon(epsilon_given) if epsilon_given is not None else None
    delta = None
    if "delta" in values:
        try:
            delta = float(values["delta"])
        except ValueError:
            raise InputError(f"δ must be a number, not {values['delta']!r}") from None
    partial_given: object = values.get("partial_results")
    if partial_given is None:
        partial_given = session.get(PARTIAL_OPTION)
    if partial_given is None:
        partial_given = headers.get(PARTIAL_HEADER)
    partial = as_bool(partial_given, "partial_results") if partial_given is not None else False
    return Resolved(dialect, epsilon, delta, partial)
