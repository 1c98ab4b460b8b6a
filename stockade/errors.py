"""Driver errors as Stockade's own error classes, with the gateway's message only.

ADBC reports a gateway's refusal as ``INVALID_ARGUMENT: [FlightSQL] <message>.
Detail: Python exception: StockadeError (InvalidArgument; Prepare)``. The client
raises the matching :mod:`gateway.errors` class with ``<message>`` alone; SQL
errors keep their line and column as fields.

>>> err = from_driver_message("INVALID_ARGUMENT: [FlightSQL] Unknown column 'nope' in table "
...     "'screenings' (line 1, column 8). Detail: Python exception: StockadeError\\n "
...     "(InvalidArgument; Prepare)", "INVALID_ARGUMENT", "grpc://h:1")
>>> type(err).__name__, err.line, err.col, str(err)
('UnknownColumnError', 1, 8, "Unknown column 'nope' in table 'screenings' (line 1, column 8)")
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import (
    AuthenticationError,
    BudgetExhaustedError,
    InputError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    QueryTimeoutError,
    SqlError,
    StockadeError,
    TableNotFoundError,
    UnavailableError,
    UnknownColumnError,
)


class TruncatedAnswerWarning(UserWarning):
    """An answer stops at the role's ``max_rows``: rows past it were not sent.

    Turn it into an error with ``warnings.simplefilter("error", TruncatedAnswerWarning)``.
    """


_STATUS = re.compile(r"\A[A-Z_]+: ")
_DRIVER = re.compile(r"\[FlightSQL\] ")
_DETAIL = re.compile(r"\.? Detail: .*\Z", re.S)
_CALL = re.compile(r"\s*\(\w+; \w+\)(?:\. Vendor code: \d+)?\s*\Z")
_POSITION = re.compile(r"\s*\(line (\d+), column (\d+)\)\.?\s*\Z")
_TABLE = re.compile(r"\ATable '([^']*)' not found")
_DIAL = re.compile(r'desc = "(?:transport: )?(?:Error while dialing: )?([^"]*)"')


def clean(message: str) -> str:
    """A driver message without the status, driver and gRPC decorations.

    >>> clean("UNAUTHENTICATED: [FlightSQL] Wrong user name or password. Detail: "
    ...       "Unauthenticated (Unauthenticated; AuthenticateBasicToken)")
    'Wrong user name or password.'
    """
    text = _STATUS.sub("", str(message).strip())
    text = _DRIVER.sub("", text)
    text = _DETAIL.sub("", text)
    text = _CALL.sub("", text).strip()
    if text and not text.endswith((".", "?", "!", ")")):
        text += "."
    return text


def _make(cls: type[StockadeError], message: str, **fields: Any) -> StockadeError:
    """An instance of ``cls`` with exactly ``message`` (bypassing message-building inits)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.message = message
    for name, value in fields.items():
        setattr(err, name, value)
    return err


def _input_error(message: str) -> StockadeError:
    position = _POSITION.search(message)
    if position is None:
        table = _TABLE.match(message)
        if table is not None:
            return _make(TableNotFoundError, message, table=table.group(1), line=None,
                         col=None, highlight=None)
        return InputError(message)
    line, col = int(position.group(1)), int(position.group(2))
    fields = {"line": line, "col": col, "highlight": None}
    table = _TABLE.match(message)
    if table is not None:
        return _make(TableNotFoundError, message, table=table.group(1), **fields)
    cls = UnknownColumnError if message.startswith("Unknown column") else SqlError
    return _make(cls, message, **fields)


def from_driver_message(raw: str, status: str, url: str) -> StockadeError:
    """The :class:`StockadeError` for a driver error ``raw`` of ``status`` (a status name)."""
    message = clean(raw)
    if status == "UNAUTHENTICATED":
        return AuthenticationError(message or "Wrong user name or password.")
    if status == "UNAUTHORIZED":
        if "budget" in message.lower() and "exhausted" in message.lower():
            return BudgetExhaustedError(message)
        return PermissionDeniedError(message)
    if status in ("INVALID_ARGUMENT", "INVALID_DATA", "INVALID_STATE"):
        return _input_error(message)
    if status == "NOT_FOUND":
        return NotFoundError(message)
    if status == "NOT_IMPLEMENTED":
        return NotSupportedError(message)
    if status == "TIMEOUT":
        return QueryTimeoutError(message)
    if status == "IO" and ("connection" in message or "Unavailable" in raw):
        dial = _DIAL.search(raw)
        reason = dial.group(1) if dial else message
        if "is unavailable" in message or message.startswith("domain '"):
            return UnavailableError(message)
        if "certificate" in reason:
            return UnavailableError(f"Cannot connect to {url} over TLS: {reason}. Pass "
                                    "tls_root_certs= the CA that signed the server's "
                                    "certificate.")
        return UnavailableError(f"Cannot reach {url}: is it running? ({reason})")
    return StockadeError(message)


def from_driver(exc: Any, url: str) -> StockadeError:
    """The :class:`StockadeError` for an ``adbc_driver_manager.Error``."""
    code = getattr(exc, "status_code", None)
    status = getattr(code, "name", "UNKNOWN")
    return from_driver_message(str(exc), status, url)
