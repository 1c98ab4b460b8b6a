"""Talking to a running gateway's actions: the CLI's ``--url`` commands and the console.

:class:`GatewayClient` logs in once (Basic, then the bearer token the gateway
returns) and runs the JSON actions of ``docs/api.md``. Flight errors come back as
the gateway's own error classes with the gateway's message, without the gRPC
suffixes pyarrow appends, so that a person can act on them:

>>> clean_message("Field 'id' is required.. Detail: Python exception: StockadeError\\n")
"Field 'id' is required."
>>> clean_message('Wrong user name or password. Detail: Unauthenticated')
'Wrong user name or password.'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from gateway.errors import (
    AuthenticationError,
    InputError,
    NotSupportedError,
    PermissionDeniedError,
    StockadeError,
    UnavailableError,
)

_DETAIL = re.compile(r"\.? Detail: .*\Z", re.S)
_GRPC_PREFIX = re.compile(r"\A(?:Flight returned \w+ error, with message: )")


def clean_message(message: str) -> str:
    """The gateway's message without what gRPC and pyarrow add around it."""
    text = _GRPC_PREFIX.sub("", _DETAIL.sub("", str(message).strip())).strip()
    if text and not text.endswith((".", "?", "!")):
        text += "."
    return text


def remote_error(exc: BaseException, url: str, kind: str = "gateway") -> StockadeError:
    """The :class:`StockadeError` for a Flight error raised by a call to ``url``
    (a ``kind``: ``gateway`` or ``network``)."""
    message = clean_message(str(exc))
    if isinstance(exc, flight.FlightUnauthenticatedError):
        return AuthenticationError(message or "Wrong user name or password.")
    if isinstance(exc, flight.FlightUnauthorizedError):
        return PermissionDeniedError(message)
    if isinstance(exc, flight.FlightUnavailableError | flight.FlightTimedOutError) or (
            isinstance(exc, flight.FlightInternalError)
            and ("Could not finish writing" in message or "failed to connect" in message.lower())):
        return UnavailableError(f"Cannot reach the {kind} at {url}: is it running? ({message})")
    if isinstance(exc, NotImplementedError | pa.ArrowNotImplementedError):
        return NotSupportedError(message)
    if isinstance(exc, pa.ArrowInvalid | pa.ArrowKeyError | ValueError | KeyError):
        return InputError(message)
    return StockadeError(message)


class GatewayClient:
    """A logged-in connection to one gateway's actions.

    ``url`` is ``grpc://HOST:PORT`` or ``grpc+tls://HOST:PORT``; ``tls_root_certs``
    is the PEM of the CA to trust for a gateway with a private certificate;
    ``kind`` names what is at ``url`` in messages (a ``network`` node logs in the
    same way).
    """

    def __init__(self, url: str, user: str, password: str, *,
                 tls_root_certs: bytes | None = None, timeout_s: float = 60.0,
                 kind: str = "gateway") -> None:
        self.url = url
        self.user = user
        self.kind = kind
        kwargs: dict[str, Any] = {}
        if tls_root_certs is not None:
            kwargs["tls_root_certs"] = tls_root_certs
        try:
            self._client = flight.FlightClient(url, **kwargs)
        except (pa.ArrowException, ValueError) as exc:
            raise InputError(f"Bad {kind} URL {url!r}: {clean_message(str(exc))} "
                             "Use grpc://HOST:PORT or grpc+tls://HOST:PORT.") from None
        try:
            header = self._client.authenticate_basic_token(user, password)
        except (flight.FlightError, pa.ArrowException) as exc:
            self._client.close()
            raise remote_error(exc, url, kind) from None
        self._options = flight.FlightCallOptions(headers=[header], timeout=timeout_s)

    def action(self, name: str, body: Mapping[str, Any] | None = None) -> Any:
        """Run the action ``name`` with the JSON ``body``; its JSON result."""
        payload = json.dumps(dict(body or {})).encode()
        try:
            results = list(self._client.do_action(flight.Action(name, payload), self._options))
        except (flight.FlightError, pa.ArrowException) as exc:
            raise remote_error(exc, self.url, self.kind) from None
        if not results:
            return None
        return json.loads(results[0].body.to_pybytes())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
