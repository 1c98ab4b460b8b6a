"""The single place where Stockade errors become Flight errors.

pyarrow's Flight server has clean (message-only) statuses for its own
``FlightError`` classes only. Statuses such as INVALID_ARGUMENT and NOT_FOUND can
only be produced by raising a Python ``ValueError``/``KeyError``, and pyarrow then
appends a formatted Python traceback to the message. :func:`to_flight_error`
raises those through small wire exceptions whose formatting carries no
traceback and no second copy of the message, and :func:`install` (called once
when a server starts) sets ``sys.tracebacklimit = 0`` so that pyarrow's
formatter prints no frames. Server logs keep full tracebacks through
:class:`TracebackFormatter`.

Any exception that is not a :class:`StockadeError` is an internal error: it is
logged with its traceback and the client gets a short message with an id to
quote, never the traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
import uuid

import pyarrow.flight as flight

from gateway.errors import StockadeError

log = logging.getLogger("stockade")


class _WireError(Exception):
    """Formats as its message once (for the status message), then as nothing.

    pyarrow reads ``str(exc)`` first for the status message, then again when it
    formats the exception for the status detail; the second read returns "" so
    the message is not repeated.
    """

    __module__ = "builtins"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message
        self._reads = 0

    def __str__(self) -> str:
        self._reads += 1
        return self._message if self._reads == 1 else ""


class _InvalidArgument(_WireError, ValueError):
    """Becomes INVALID_ARGUMENT."""


class _NotFound(_WireError, KeyError):
    """Becomes NOT_FOUND."""


class _Unimplemented(_WireError, NotImplementedError):
    """Becomes UNIMPLEMENTED."""


for _cls in (_InvalidArgument, _NotFound, _Unimplemented):
    _cls.__module__ = "builtins"
    _cls.__qualname__ = "StockadeError"


def install() -> None:
    """Make pyarrow format server-side exceptions without traceback frames."""
    sys.tracebacklimit = 0


class TracebackFormatter(logging.Formatter):
    """A log formatter that prints whole tracebacks despite ``sys.tracebacklimit``."""

    def formatException(self, ei):  # type: ignore[no-untyped-def]  # noqa: N802
        return "".join(traceback.format_exception(ei[0], ei[1], ei[2], limit=200)).rstrip()


def _clean(message: str) -> str:
    # pyarrow appends ". Detail: ..." to the message; avoid "..".
    return message.rstrip().rstrip(".")


def to_flight_error(exc: BaseException) -> BaseException:
    """Return the exception to raise towards a Flight client for ``exc``.

    >>> e = to_flight_error(__import__("gateway.errors").errors.AuthenticationError("Wrong password."))
    >>> type(e).__name__, str(e)
    ('FlightUnauthenticatedError', 'Wrong password')
    """
    already_flight = isinstance(exc, flight.FlightError)
    if already_flight:
        return exc
    if not isinstance(exc, StockadeError):
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s", incident, exc_info=exc)
        internal: type[BaseException] = flight.FlightInternalError
        return internal(
            f"Internal error in the Stockade server (incident {incident}); "
            "the server log has the details"
        )
    message = _clean(exc.message)
    return (_BY_STATUS.get(exc.status) or _BY_STATUS["internal"])(message)


# Arrow's server cannot produce gRPC RESOURCE_EXHAUSTED (no Arrow status maps to
# it), and UNAVAILABLE would invite clients to retry. An exhausted budget is
# therefore PERMISSION_DENIED (FlightUnauthorizedError); the message says what is
# left and what the query needs. (A google.rpc.Status of code RESOURCE_EXHAUSTED in
# the error details is not an option: gRPC Go, under ADBC, rejects details whose
# code differs from the call's status and reports an INTERNAL error instead.)
_BY_STATUS: dict[str, type[BaseException]] = {
    "invalid_argument": _InvalidArgument,
    "not_found": _NotFound,
    "unimplemented": _Unimplemented,
    "unauthenticated": flight.FlightUnauthenticatedError,
    "unauthorized": flight.FlightUnauthorizedError,
    "unavailable": flight.FlightUnavailableError,
    "timed_out": flight.FlightTimedOutError,
    "cancelled": flight.FlightCancelledError,
    "resource_exhausted": flight.FlightUnauthorizedError,
    "internal": flight.FlightInternalError,
}
