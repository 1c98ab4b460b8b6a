"""Prepared statements and their executions: owner-scoped, bounded stores, and tickets.

A prepared statement handle is random (``secrets``) and only its owner may use
it; anyone else is told "Prepared statement not found", the same answer as for
a handle that never existed. Each owner holds at most ``max_per_owner`` open
statements; creating one more closes the oldest.

A result ticket names exactly one planned execution. For a prepared statement,
GetFlightInfo records the statement's query and the parameters bound at that
moment as an *execution* (:meth:`PreparedStatements.execution_ticket`) under a
random id that only its owner can fetch: binding other values afterwards and
asking again gives another ticket, and each ticket still fetches its own
answer. Executions are bounded per owner (the oldest forgotten first) and in
all, by count and by the bytes of their query and parameters.

Statement-query tickets carry the query text itself (:func:`query_handle`):
DoGet re-runs the whole path with the caller's identity, so a forged ticket is
no more than a query the caller could have sent.

>>> store = PreparedStatements(max_per_owner=2)
>>> h1 = store.create("ann", "SELECT 1", pa.schema([]), pa.schema([]))
>>> store.get("ann", h1).query
'SELECT 1'
>>> store.get("bob", h1)
Traceback (most recent call last):
gateway.errors.NotFoundError: Prepared statement not found
>>> ticket = store.execution_ticket("ann", h1, None)
>>> store.execution("ann", ticket).query, is_execution_ticket(ticket)
('SELECT 1', True)
>>> store.execution("bob", ticket)  # doctest: +ELLIPSIS
Traceback (most recent call last):
gateway.errors.NotFoundError: Result ticket not found...
>>> decode_query_handle(query_handle("SELECT 2"))
'SELECT 2'
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow as pa

from gateway.errors import InputError, NotFoundError

_QUERY_MAGIC = b"stockade-q1:"
_EXECUTION_MAGIC = b"stockade-x1:"
#: The most executions remembered, in all and their bytes (query text and parameters).
MAX_EXECUTIONS = 10_000
MAX_EXECUTION_BYTES = 256 * 1024 * 1024


def query_handle(query: str) -> bytes:
    """The statement handle of a statement-query ticket: the query, encoded."""
    return _QUERY_MAGIC + query.encode("utf-8")


def decode_query_handle(handle: bytes) -> str:
    """The query text of a ticket made by :func:`query_handle`."""
    if not handle.startswith(_QUERY_MAGIC):
        raise InputError("Invalid statement ticket: run the query again")
    try:
        return handle[len(_QUERY_MAGIC) :].decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("Invalid statement ticket: run the query again") from None


def is_execution_ticket(handle: bytes) -> bool:
    """Whether a statement handle names an execution (see :meth:`PreparedStatements.execution`)."""
    return handle.startswith(_EXECUTION_MAGIC)


@dataclass(frozen=True)
class Execution:
    """One planned execution of a prepared statement: its query and parameters, as bound."""

    owner: str
    query: str
    parameters: pa.RecordBatch | None

    @property
    def nbytes(self) -> int:
        return len(self.query) + (self.parameters.nbytes if self.parameters is not None else 0)


@dataclass
class PreparedStatement:
    """One open prepared statement."""

    handle: bytes
    owner: str
    query: str
    dataset_schema: pa.Schema
    parameter_schema: pa.Schema
    parameters: pa.RecordBatch | None = None


class PreparedStatements:
    """The open prepared statements of a server, by handle and owner (thread-safe)."""

    def __init__(self, max_per_owner: int = 1000, *, max_executions: int = MAX_EXECUTIONS,
                 max_execution_bytes: int = MAX_EXECUTION_BYTES) -> None:
        self.max_per_owner = max_per_owner
        self._lock = threading.Lock()
        self._by_owner: dict[str, OrderedDict[bytes, PreparedStatement]] = {}
        # (owner, id) -> execution, oldest first; how many each owner has; their bytes.
        self.max_executions = max_executions
        self.max_execution_bytes = max_execution_bytes
        self._executions: OrderedDict[tuple[str, bytes], Execution] = OrderedDict()
        self._executions_of: dict[str, int] = {}
        self._execution_bytes = 0

    def create(
        self, owner: str, query: str, dataset_schema: pa.Schema, parameter_schema: pa.Schema
    ) -> bytes:
        """Store a new statement for ``owner`` and return its handle."""
        handle = secrets.token_hex(16).encode("ascii")
        stmt = PreparedStatement(handle, owner, query, dataset_schema, parameter_schema)
        with self._lock:
            mine = self._by_owner.setdefault(owner, OrderedDict())
            mine[handle] = stmt
            while len(mine) > self.max_per_owner:
                mine.popitem(last=False)
        return handle

    def get(self, owner: str, handle: bytes) -> PreparedStatement:
        """The statement ``handle`` of ``owner``; NotFoundError for anyone else."""
        with self._lock:
            mine = self._by_owner.get(owner)
            stmt = mine.get(handle) if mine is not None else None
        if stmt is None:
            raise NotFoundError("Prepared statement not found")
        return stmt

    def bind(self, owner: str, handle: bytes, parameters: pa.RecordBatch | None) -> None:
        """Bind ``parameters`` (one row per execution) to a statement."""
        stmt = self.get(owner, handle)
        with self._lock:
            stmt.parameters = parameters

    def close(self, owner: str, handle: bytes) -> None:
        """Close a statement of ``owner``."""
        with self._lock:
            mine = self._by_owner.get(owner)
            stmt = mine.pop(handle, None) if mine is not None else None
            if mine is not None and not mine:
                del self._by_owner[owner]
        if stmt is None:
            raise NotFoundError("Prepared statement not found")

    def execution_ticket(self, owner: str, handle: bytes,
                         parameters: pa.RecordBatch | None) -> bytes:
        """Record the statement's query with ``parameters``; the handle of a ticket for it."""
        stmt = self.get(owner, handle)
        with self._lock:
            execution = Execution(owner, stmt.query, parameters)
            key = (owner, secrets.token_hex(16).encode("ascii"))
            self._executions[key] = execution
            self._executions_of[owner] = self._executions_of.get(owner, 0) + 1
            self._execution_bytes += execution.nbytes
            self._forget_executions(owner)
        return _EXECUTION_MAGIC + key[1]

    def _forget_executions(self, owner: str) -> None:
        """Drop the oldest executions past the bounds (the lock is held)."""
        if self._executions_of.get(owner, 0) > self.max_per_owner:
            oldest = next(k for k in self._executions if k[0] == owner)
            self._drop_execution(oldest)
        while self._executions and (len(self._executions) > self.max_executions
                                    or self._execution_bytes > self.max_execution_bytes):
            self._drop_execution(next(iter(self._executions)))

    def _drop_execution(self, key: tuple[str, bytes]) -> None:
        execution = self._executions.pop(key)
        self._execution_bytes -= execution.nbytes
        left = self._executions_of[key[0]] - 1
        if left:
            self._executions_of[key[0]] = left
        else:
            del self._executions_of[key[0]]

    def execution(self, owner: str, handle: bytes) -> Execution:
        """The execution a ticket names, for its owner only (NotFoundError for anyone else)."""
        with self._lock:
            found = self._executions.get((owner, handle[len(_EXECUTION_MAGIC):]))
        if found is None or not is_execution_ticket(handle):
            raise NotFoundError("Result ticket not found (results are kept for their owner, "
                                "for a while): execute the statement again")
        return found

    def count(self, owner: str) -> int:
        """How many statements ``owner`` has open."""
        with self._lock:
            return len(self._by_owner.get(owner, {}))
