"""The one error hierarchy of Stockade.

Every error a person can act on is a :class:`StockadeError`. Each class names the
Flight status it becomes (``status``); :func:`gateway.flight_errors.to_flight_error`
is the only place that turns these errors into Flight errors. This module imports
nothing from the project, so every package may use it.

>>> err = SqlSyntaxError("Unexpected token 'FORM'", line=1, col=10)
>>> err.status, err.line, err.col
('invalid_argument', 1, 10)
>>> str(err)
"Unexpected token 'FORM' (line 1, column 10)"
>>> isinstance(err, ValueError)
True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import ClassVar

# The Flight statuses we use, by name. ``gateway.flight_errors`` maps them.
STATUSES = (
    "invalid_argument",
    "not_found",
    "unauthenticated",
    "unauthorized",
    "resource_exhausted",
    "unavailable",
    "timed_out",
    "cancelled",
    "unimplemented",
    "internal",
)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return `` Did you mean 'x'?`` for the closest candidate, or ``""``.

    >>> did_you_mean("ssnn", ["ssn", "age"])
    " Did you mean 'ssn'?"
    >>> did_you_mean("zzz", ["ssn", "age"])
    ''
    """
    pool = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(pool), n=1, cutoff=0.6)
    return f" Did you mean '{pool[close[0]]}'?" if close else ""


class StockadeError(Exception):
    """Root of every error Stockade raises on purpose.

    ``message`` is written for the person who must act on it; it never carries
    values of protected data.
    """

    status: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(StockadeError, ValueError):
    """Something the caller sent is wrong and can be fixed by them."""

    status = "invalid_argument"


class SqlError(InputError):
    """An error in a SQL text, located at ``line``/``col`` (1-based) when known."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        col: int | None = None,
        highlight: str | None = None,
    ) -> None:
        self.line = line
        self.col = col
        self.highlight = highlight
        if line is not None and col is not None:
            message = f"{message.rstrip('.')} (line {line}, column {col})"
        super().__init__(message)


class SqlSyntaxError(SqlError):
    """The SQL does not parse."""


class RefusedStatementError(SqlError):
    """The statement is not a single read-only query (DDL, DML, PRAGMA, ...)."""


class ForbiddenFunctionError(SqlError):
    """A function that is not on the allow-list."""


class UnknownColumnError(SqlError):
    """A column that does not exist (or is hidden) in a visible table."""


class TableNotFoundError(SqlError):
    """A table that does not exist *or that the caller may not see*.

    The message is the same in both cases, on purpose.
    """

    def __init__(
        self,
        table: str,
        *,
        candidates: Iterable[str] = (),
        line: int | None = None,
        col: int | None = None,
    ) -> None:
        self.table = table
        super().__init__(
            f"Table '{table}' not found.{did_you_mean(table, candidates)}", line=line, col=col
        )


class NotSupportedError(InputError):
    """A feature that exists in the design but is not available (yet) here."""


class PolicyError(InputError):
    """A policy file that is invalid; ``where`` is the path inside the file."""

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.where = where
        self.file = file
        self.line = line
        prefix = ""
        if file is not None:
            prefix = f"{file}:{line}: " if line is not None else f"{file}: "
        elif line is not None:
            prefix = f"line {line}: "
        if where:
            prefix += f"{where}: "
        super().__init__(prefix + message)


class ConfigError(InputError):
    """A bad command-line option, setting or environment variable."""


class ConnectorError(StockadeError):
    """A data source cannot be read (missing file, database down, ...)."""

    status = "unavailable"


class UnavailableError(StockadeError):
    """A service Stockade needs (a gateway, a domain) cannot be reached."""

    status = "unavailable"


class AuthenticationError(StockadeError):
    """Wrong or missing credentials, an expired or unknown token."""

    status = "unauthenticated"


class PermissionDeniedError(StockadeError):
    """The caller is known but may not do this."""

    status = "unauthorized"


class NotFoundError(StockadeError, LookupError):
    """A named object (user, prepared statement, ...) that does not exist."""

    status = "not_found"


class BudgetExhaustedError(StockadeError):
    """The privacy budget does not cover the query."""

    status = "resource_exhausted"


class QueryTimeoutError(StockadeError):
    """The query ran past its time limit and was stopped."""

    status = "timed_out"


class QueryFailedError(InputError):
    """The engine refused a query that passed the policy (bad cast, overflow, ...).

    The message never carries a value of the data (invariant 5): a fixed text per
    class of error, or, for an error about the SQL text found before any row is read,
    the engine's text scrubbed of literals. ``detail`` keeps what the engine said, for
    the owner's audit log only.
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail
