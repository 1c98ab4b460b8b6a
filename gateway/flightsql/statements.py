"""Prepared statements: an owner-scoped, bounded store, and stateless tickets.

A prepared statement handle is random (``secrets``) and only its owner may use
it; anyone else is told "Prepared statement not found", the same answer as for
a handle that never existed. Each owner holds at most ``max_per_owner`` open
statements; creating one more closes the oldest.

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

    def __init__(self, max_per_owner: int = 1000) -> None:
        self.max_per_owner = max_per_owner
        self._lock = threading.Lock()
        self._by_owner: dict[str, OrderedDict[bytes, PreparedStatement]] = {}

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

    def count(self, owner: str) -> int:
        """How many statements ``owner`` has open."""
        with self._lock:
            return len(self._by_owner.get(owner, {}))
