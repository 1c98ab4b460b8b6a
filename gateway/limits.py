"""What one request may ask of a server: its size, and the time it may take.

:class:`RequestLimits` bounds what a client can make a server parse, plan and hold
for one request (invariant 9): the SQL text, the expression tree sqlglot builds
from it, and the parameter rows bound to a prepared statement. The servers (a
domain gateway, a network node) take them from their settings
(:mod:`gateway.settings`, ``settings:`` of ``network.yaml``); the defaults were
chosen by measuring the planner (``docs/operations.md``, "Request limits").

:class:`Deadline` is one request's time limit, started when the request arrives:
the steps of a query (parse, plan, each parameter row's execution) check it in
between, and each execution gets what is left of it.

An answer cut at the role's ``max_rows`` says so in its Arrow schema metadata:
``stockade.truncated: true`` and ``stockade.max_rows: N`` (:func:`truncated_at`
reads them; clients show them, see :mod:`gateway.results` for how they are set).

>>> limits = RequestLimits(max_query_bytes=10)
>>> limits.check_query("SELECT 1")
>>> limits.check_query("SELECT 1 + 1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gateway.errors.InputError: The query is 12 bytes long; ... queries of up to 10 bytes. ...
>>> RequestLimits(max_parameter_rows=2).check_parameters(rows=3, nbytes=24)
... # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gateway.errors.InputError: 3 parameter rows were bound; this server runs at most 2 per request...
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from gateway.errors import InputError, QueryTimeoutError

#: Schema metadata of an answer cut at the role's ``max_rows``.
TRUNCATED_KEY = b"stockade.truncated"
MAX_ROWS_KEY = b"stockade.max_rows"


def truncated_at(schema: pa.Schema) -> int | None:
    """The ``max_rows`` an answer with this schema was cut at; None if it was not cut.

    >>> meta = {TRUNCATED_KEY: b"true", MAX_ROWS_KEY: b"20"}
    >>> truncated_at(pa.schema([("n", pa.int64())], metadata=meta))
    20
    >>> truncated_at(pa.schema([("n", pa.int64())])) is None
    True
    """
    meta = schema.metadata or {}
    if meta.get(TRUNCATED_KEY) != b"true":
        return None
    try:
        return int(meta.get(MAX_ROWS_KEY, b"0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class RequestLimits:
    """The most one request may carry (see the module doc and ``docs/operations.md``).

    ``max_query_bytes``: the SQL text, UTF-8 encoded. ``max_query_nodes`` and
    ``max_query_depth``: the number of nodes of its expression tree, and how deep
    the tree nests (a chain ``a AND b AND c`` nests one level per condition).
    ``max_parameter_rows`` and ``max_parameter_bytes``: the rows bound to one
    prepared statement execution, and their Arrow size.
    """

    max_query_bytes: int = 100_000
    max_query_nodes: int = 2_000
    max_query_depth: int = 200
    max_parameter_rows: int = 1_000
    max_parameter_bytes: int = 1024 * 1024

    @classmethod
    def of(cls, settings: object) -> RequestLimits:
        """The limits held by ``settings`` under the same names (a gateway's or a network's).

        >>> RequestLimits.of(RequestLimits(max_query_depth=10)).max_query_depth
        10
        """
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def check_query(self, sql: str) -> None:
        """Refuse a query text longer than ``max_query_bytes``."""
        size = len(sql.encode("utf-8", "surrogatepass"))
        if size > self.max_query_bytes:
            raise InputError(
                f"The query is {size} bytes long; this server accepts queries of up to "
                f"{self.max_query_bytes} bytes. Split it into smaller queries, or ask the "
                "operator to raise max_query_bytes."
            )

    def check_parameters(self, *, rows: int, nbytes: int) -> None:
        """Refuse parameter rows beyond ``max_parameter_rows`` or ``max_parameter_bytes``."""
        if rows > self.max_parameter_rows:
            raise InputError(
                f"{rows} parameter rows were bound; this server runs at most "
                f"{self.max_parameter_rows} per request. Bind fewer rows and execute again "
                "for the rest."
            )
        if nbytes > self.max_parameter_bytes:
            raise InputError(
                f"The bound parameters take {nbytes} bytes; this server accepts up to "
                f"{self.max_parameter_bytes} per request. Bind fewer or smaller values."
            )


def timeout_error(timeout_s: float) -> QueryTimeoutError:
    """The error of a query stopped at its role's time limit.

    >>> print(timeout_error(3))  # doctest: +ELLIPSIS
    Query stopped after 3 s, the time limit for your role. Add filters or a LIMIT, ...
    """
    return QueryTimeoutError(
        f"Query stopped after {timeout_s:g} s, the time limit for your role. "
        "Add filters or a LIMIT, or ask the data owner for a longer limit."
    )


class Deadline:
    """The moment one request must be done by: ``timeout_s`` from its creation.

    ``timeout_s`` None never expires.

    >>> d = Deadline(60)
    >>> 59 < d.remaining() <= 60, d.expired()
    (True, False)
    >>> Deadline(None).remaining() is None
    True
    >>> Deadline(0).check()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gateway.errors.QueryTimeoutError: Query stopped after 0 s, the time limit for your role. ...
    """

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._end = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        """Seconds left (at most ``timeout_s``, possibly negative), or None without a limit."""
        return None if self._end is None else self._end - time.monotonic()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    def check(self) -> None:
        """Raise the role's timeout error when the deadline has passed."""
        if self.expired():
            raise self.error()

    def error(self) -> QueryTimeoutError:
        return timeout_error(self.timeout_s or 0)

    def timeout(self) -> float | None:
        """What is left, for a step that takes a timeout; raises if nothing is left."""
        self.check()
        return self.remaining()
