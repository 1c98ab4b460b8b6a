"""One domain of the network, seen from the network: :class:`DomainLink`.

A link holds one Flight client of the domain (thread-safe, shared by every
analyst) and makes the calls the network needs, each carrying the *analyst's*
bearer token at that domain: log in with Basic credentials, run a Flight SQL
statement (GetFlightInfo, then DoGet of its endpoint), ask a statement's
schema, list the tables the analyst may see, run a JSON action. Every call has
the domain's ``timeout_s`` as its deadline.

Every failure becomes a :mod:`gateway.errors` error whose message names the
domain, so that the analyst knows which one to blame:

>>> err = domain_error("st_marys", 30, flight.FlightTimedOutError("deadline"))
>>> err.status, str(err)
('unavailable', "domain 'st_marys' did not answer within 30 s")
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from gateway.errors import (
    AuthenticationError,
    InputError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    StockadeError,
    UnavailableError,
)
from gateway.flightsql import flight_sql_pb2 as pb
from gateway.flightsql.server import TableInfo, pack, unpack
from gateway.remote import clean_message
from network.config import DomainConfig

Headers = Sequence[tuple[bytes, bytes]]
_DETAIL = re.compile(r"Detail: (\w+)\W*\Z")

_CONNECTION_TROUBLE = ("failed to connect", "could not finish writing", "connection refused",
                       "socket closed", "connection reset", "broken pipe", "end of tcp stream",
                       "connect failed", "unavailable")


class DomainTimeout(UnavailableError):
    """A domain did not answer within its ``timeout_s``."""


class DomainDown(UnavailableError):
    """A domain cannot be reached (not running, network trouble, stopped mid-answer)."""


class DomainRejected(AuthenticationError):
    """A domain refused the analyst's credentials (or token)."""


def domain_error(name: str, timeout_s: float, exc: BaseException) -> StockadeError:
    """The error to report for ``exc``, raised by a call to domain ``name``."""
    if isinstance(exc, StockadeError):
        return exc
    raw = str(exc)
    message = clean_message(raw) or type(exc).__name__
    lowered = message.lower()
    # Some calls (GetSchema) raise a plain OSError whose text ends with the status.
    detail = _DETAIL.search(raw) if not isinstance(exc, flight.FlightError) else None
    status = detail.group(1) if detail else None
    if isinstance(exc, flight.FlightTimedOutError) or "deadline exceeded" in lowered or (
            status == "TimedOut"):
        return DomainTimeout(f"domain '{name}' did not answer within {timeout_s:g} s")
    if isinstance(exc, flight.FlightUnauthenticatedError) or status == "Unauthenticated":
        return DomainRejected(f"domain '{name}' rejected your credentials: {message}")
    if isinstance(exc, flight.FlightUnavailableError) or status == "Unavailable" or (
            isinstance(exc, flight.FlightError | OSError)
            and any(t in lowered for t in _CONNECTION_TROUBLE)):
        return DomainDown(f"domain '{name}' is unavailable: {message}")
    if isinstance(exc, flight.FlightUnauthorizedError) or status == "Unauthorized":
        return PermissionDeniedError(f"domain '{name}': {message}")
    if isinstance(exc, NotImplementedError | pa.ArrowNotImplementedError):
        return NotSupportedError(f"domain '{name}': {message}")
    if isinstance(exc, pa.ArrowKeyError | KeyError):
        return NotFoundError(f"domain '{name}': {message}")
    if isinstance(exc, pa.ArrowInvalid | ValueError):
        return InputError(f"domain '{name}': {message}")
    return UnavailableError(f"domain '{name}' failed: {message}")


@dataclass
class RoutedAnswer:
    """A statement a domain accepted: its FlightInfo (schema, tickets), to fetch later."""

    link: DomainLink
    token: str
    info: flight.FlightInfo
    headers: Headers
    prepared: bytes | None = None  # the domain's prepared statement handle, if any

    @property
    def schema(self) -> pa.Schema:
        return self.info.schema

    def stream(self) -> pa.RecordBatchReader:
        """The answer's batches, as the domain sends them (errors name the domain)."""
        return self.link.fetch(self)


class DomainLink:
    """The network's connection to one configured domain."""

    def __init__(self, config: DomainConfig) -> None:
        self.config = config
        self.name = config.name
        self.own_name = config.own_name  # analysts' credentials here are derived for it
        self.url = config.url
        self.timeout_s = config.timeout_s
        self._tls = config.tls_root_certs()
        self._client: flight.FlightClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DomainLink({self.name!r}, {self.url!r})"

    # -- plumbing -----------------------------------------------------------------

    @property
    def client(self) -> flight.FlightClient:
        with self._lock:
            if self._client is None:
                kwargs: dict[str, Any] = {}
                if self._tls is not None:
                    kwargs["tls_root_certs"] = self._tls
                self._client = flight.FlightClient(self.url, **kwargs)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def options(self, token: str | None = None, headers: Headers = (),
                timeout_s: float | None = None, *, aligned: bool = False
                ) -> flight.FlightCallOptions:
        """Call options: the analyst's token, ``headers``, the deadline.

        ``aligned`` copies received buffers that are not aligned for their type (answers
        the network computes on, rather than streams through).
        """
        all_headers = list(headers)
        if token is not None:
            all_headers.append((b"authorization", token.encode()))
        read = pa.ipc.IpcReadOptions(ensure_alignment=pa.ipc.Alignment.DataTypeSpecific) \
            if aligned else None
        return flight.FlightCallOptions(
            headers=all_headers, timeout=self.timeout_s if timeout_s is None else timeout_s,
            read_options=read)

    def error(self, exc: BaseException) -> StockadeError:
        return domain_error(self.name, self.timeout_s, exc)

    # -- calls ----------------------------------------------------------------------

    def login(self, user: str, credential: str) -> str:
        """Log ``user`` in with ``credential`` (derived for this domain, never a password);
        the ``Bearer …`` value to send with every later call."""
        try:
            _, value = self.client.authenticate_basic_token(user, credential, self.options())
            token = value.decode() if isinstance(value, bytes) else str(value)
            # A domain that throttles a much-refused user name decides its login at the
            # first call after the handshake (gateway.auth's deferred logins): make that
            # call now, so a refusal is seen as one here and not later as a broken call.
            list(self.client.list_actions(self.options(token)))
        except Exception as exc:
            raise self.error(exc) from None
        return token

    def ping(self, timeout_s: float) -> None:
        """A cheap call without credentials: returns if the domain answers at all.

        A domain answers every unauthenticated call with UNAUTHENTICATED: that is
        an answer, so the domain is up.
        """
        try:
            list(self.client.list_actions(self.options(timeout_s=timeout_s)))
        except flight.FlightUnauthenticatedError:
            return
        except Exception as exc:
            error = domain_error(self.name, timeout_s, exc)
            if isinstance(error, UnavailableError):
                raise error from None
            return  # it answered, if with an error

    def statement(self, token: str, sql: str, headers: Headers = (),
                  parameters: pa.RecordBatch | None = None) -> RoutedAnswer:
        """GetFlightInfo of ``sql`` (a dp domain computes and charges its answer here)."""
        if parameters is not None and parameters.num_columns:
            return self._prepared_statement(token, sql, headers, parameters)
        command = pb.CommandStatementQuery(query=sql)
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        try:
            info = self.client.get_flight_info(descriptor, self.options(token, headers))
        except Exception as exc:
            raise self.error(exc) from None
        return RoutedAnswer(self, token, info, headers)

    def _prepared_statement(self, token: str, sql: str, headers: Headers,
                            parameters: pa.RecordBatch) -> RoutedAnswer:
        options = self.options(token, headers)
        request = pb.ActionCreatePreparedStatementRequest(query=sql)
        try:
            results = list(self.client.do_action(
                flight.Action("CreatePreparedStatement", pack(request)), options))
            _, created = unpack(results[0].body.to_pybytes())
            handle = created.prepared_statement_handle
            command = pb.CommandPreparedStatementQuery(prepared_statement_handle=handle)
            descriptor = flight.FlightDescriptor.for_command(pack(command))
            writer, reader = self.client.do_put(descriptor, parameters.schema, options)
            writer.write_batch(parameters)
            writer.done_writing()
            reader.read()
            writer.close()
            info = self.client.get_flight_info(descriptor, options)
        except Exception as exc:
            raise self.error(exc) from None
        return RoutedAnswer(self, token, info, headers, prepared=handle)

    def fetch(self, answer: RoutedAnswer, *, aligned: bool = False) -> pa.RecordBatchReader:
        """Stream the endpoints of ``answer`` from the domain, in order."""
        options = self.options(answer.token, answer.headers, aligned=aligned)
        readers = []
        try:
            for endpoint in answer.info.endpoints:
                readers.append(self.client.do_get(endpoint.ticket, options))
            schema = readers[0].schema if readers else answer.info.schema
        except Exception as exc:
            self._close_prepared(answer)
            raise self.error(exc) from None

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for reader in readers:
                    while True:
                        try:
                            chunk = reader.read_chunk()
                        except StopIteration:
                            break
                        if chunk.data is not None:
                            yield chunk.data
            except Exception as exc:
                raise self.error(exc) from None
            finally:
                self._close_prepared(answer)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _close_prepared(self, answer: RoutedAnswer) -> None:
        if answer.prepared is None:
            return
        request = pb.ActionClosePreparedStatementRequest(
            prepared_statement_handle=answer.prepared)
        answer.prepared = None
        try:
            list(self.client.do_action(flight.Action("ClosePreparedStatement", pack(request)),
                                       self.options(answer.token, answer.headers)))
        except Exception:  # the domain forgets it with the token anyway
            pass

    def table(self, token: str, sql: str, headers: Headers = ()) -> pa.Table:
        """The whole answer to ``sql`` (GetFlightInfo and DoGet), with its schema metadata."""
        answer = self.statement(token, sql, headers)
        reader = self.fetch(answer, aligned=True)
        table = reader.read_all()
        metadata = answer.info.schema.metadata
        if metadata and not table.schema.metadata:
            table = table.replace_schema_metadata(metadata)
        return table

    def query_schema(self, token: str, sql: str, headers: Headers = ()) -> pa.Schema:
        """The schema of ``sql``'s answer, without running it (GetSchema)."""
        descriptor = flight.FlightDescriptor.for_command(pack(pb.CommandStatementQuery(query=sql)))
        try:
            return self.client.get_schema(descriptor, self.options(token, headers)).schema
        except Exception as exc:
            raise self.error(exc) from None

    def parameter_schema(self, token: str, sql: str, headers: Headers = ()) -> pa.Schema:
        """The schema of ``sql``'s ``?`` parameters, as the domain infers it."""
        options = self.options(token, headers)
        request = pb.ActionCreatePreparedStatementRequest(query=sql)
        try:
            results = list(self.client.do_action(
                flight.Action("CreatePreparedStatement", pack(request)), options))
            _, created = unpack(results[0].body.to_pybytes())
            close = pb.ActionClosePreparedStatementRequest(
                prepared_statement_handle=created.prepared_statement_handle)
            list(self.client.do_action(flight.Action("ClosePreparedStatement", pack(close)),
                                       options))
        except Exception as exc:
            raise self.error(exc) from None
        if not created.parameter_schema:
            return pa.schema([])
        return pa.ipc.read_schema(pa.py_buffer(created.parameter_schema))

    def tables(self, token: str) -> list[TableInfo]:
        """Every table the analyst may see here, with its schema, under this domain's name."""
        command = pb.CommandGetTables(include_schema=True)
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        options = self.options(token)
        try:
            info = self.client.get_flight_info(descriptor, options)
            table = pa.concat_tables(
                [self.client.do_get(e.ticket, options).read_all() for e in info.endpoints])
        except Exception as exc:
            raise self.error(exc) from None
        out = []
        for row in table.to_pylist():
            schema = pa.ipc.read_schema(pa.py_buffer(row["table_schema"]))
            out.append(TableInfo(self.name, row["db_schema_name"], row["table_name"],
                                 row["table_type"], schema))
        return out

    def action(self, token: str, name: str, body: Mapping[str, Any] | None = None) -> Any:
        """Run the domain's JSON action ``name``; its JSON result (None if it sends none)."""
        payload = json.dumps(dict(body or {})).encode()
        try:
            results = list(self.client.do_action(flight.Action(name, payload),
                                                 self.options(token)))
        except Exception as exc:
            raise self.error(exc) from None
        if not results:
            return None
        return json.loads(results[0].body.to_pybytes())
