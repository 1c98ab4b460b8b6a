"""The audit log: append-only, hash-chained records in the state store.

Every query (who, their role, the SQL as sent, the rewritten SQL as shown to
people — secrets written ``{secret.NAME}`` —, the decision per table, ε/δ
charged, rows returned, duration, the error if refused) and every failed login
is one row of the ``audit_log`` table.

Each record carries ``hash = SHA-256(prev_hash || canonical content)``, where
``prev_hash`` is the previous record's hash (the first record's is
:data:`GENESIS`) and the canonical content is the compact JSON array
``[id, at, kind, user, details]``. The previous hash is read inside the same
``BEGIN IMMEDIATE`` transaction as the insert, so concurrent writers (threads or
processes) keep the chain linear. :meth:`AuditLog.verify` finds a record that
was edited (its hash no longer matches), removed from the middle (a gap in the
ids, or a ``prev_hash`` that does not match) or removed from the end (SQLite's
``AUTOINCREMENT`` counter is beyond the last id).

>>> import tempfile
>>> from gateway.state import StateStore
>>> with tempfile.TemporaryDirectory() as data_dir:
...     with StateStore(data_dir) as store:
...         log = AuditLog(store)
...         log.login_failure("mallory", "unknown_user")
...         _ = log.append("query", "alice", {"role": "analyst", "sql": "SELECT 1"})
...         result = log.verify()
...         [(r.kind, r.user) for r in log.records()]
...         print(result)
[('login_failure', 'mallory'), ('query', 'alice')]
2 records, chain intact
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.state import StateStore

log = logging.getLogger("stockade.audit")

#: The ``prev_hash`` of the first record.
GENESIS = hashlib.sha256(b"stockade audit log genesis").hexdigest()

QUERY = "query"
LOGIN_FAILURE = "login_failure"


def canonical(record_id: int, at: float, kind: str, user: str, details: str) -> str:
    """The text a record's hash covers (``details`` is the stored JSON text).

    >>> canonical(1, 1.5, "query", "ann", '{"rows":3}')
    '[1,1.5,"query","ann","{\\\\"rows\\\\":3}"]'
    """
    return json.dumps([record_id, at, kind, user, details], separators=(",", ":"),
                      ensure_ascii=False)


def record_hash(prev_hash: str, content: str) -> str:
    """SHA-256 of the previous hash followed by this record's canonical content."""
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def _details_json(details: Mapping[str, Any]) -> str:
    return json.dumps(dict(details), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)


@dataclass(frozen=True)
class AuditRecord:
    """One record as stored."""

    id: int
    at: float
    kind: str
    user: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    @property
    def time(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "kind": self.kind, "user": self.user,
                **dict(self.details), "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class Verification:
    """The outcome of :meth:`AuditLog.verify`: ``bad_id`` is None when intact."""

    count: int
    bad_id: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.bad_id is None

    def __str__(self) -> str:
        if self.ok:
            return f"{self.count} records, chain intact"
        return f"audit chain broken at record {self.bad_id}: {self.problem}"


class AuditLog:
    """Appends to and reads the audit log of one :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        # Query records are written by one background thread, several per
        # transaction, so that a query's answer never waits for the log's fsync.
        self._pending: deque[tuple[str, str, str, float]] = deque()
        self._cond = threading.Condition()
        self._writing = False
        self._writer: threading.Thread | None = None

    def append(self, kind: str, user: str, details: Mapping[str, Any]) -> int:
        """Append one record now (after any queued ones); returns its id."""
        self.flush()
        return self._write([(kind, user, _details_json(details), self.store._clock())])

    def _write(self, batch: list[tuple[str, str, str, float]]) -> int:
        """Append ``batch`` in one transaction, chained in order; the last id."""
        record_id = 0
        with self.store._transaction() as con:
            row = con.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
            last_id = int(row[0]) if row else 0
            last = con.execute(
                "SELECT hash FROM audit_log WHERE id = ?", (last_id,)).fetchone()
            prev = last[0] if last else GENESIS
            for kind, user, text, at in batch:
                record_id = last_id + 1
                digest = record_hash(prev, canonical(record_id, at, kind, user, text))
                con.execute(
                    "INSERT INTO audit_log (id, at, kind, user_name, details, prev_hash, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record_id, at, kind, user, text, prev, digest),
                )
                last_id, prev = record_id, digest
        return record_id

    def safe_append(self, kind: str, user: str, details: Mapping[str, Any]) -> None:
        """Queue one record for the background writer; auditing never breaks a query.

        A record queued but not yet written when the process dies is lost (the
        chain stays intact); the writer commits within milliseconds.
        """
        try:
            item = (kind, user, _details_json(details), self.store._clock())
        except Exception:
            log.exception("could not encode an audit record (%s by %s)", kind, user)
            return
        with self._cond:
            self._pending.append(item)
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="stockade-audit",
                                                daemon=True)
                self._writer.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = list(self._pending)
                self._pending.clear()
                self._writing = True
            try:
                self._write(batch)
            except Exception:
                log.exception("could not write %d audit record(s)", len(batch))
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record is written."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("audit records are still being written")
                self._cond.wait(left)

    def login_failure(self, user: str, reason: str) -> None:
        """Record a failed login (``reason`` as given by the authenticator)."""
        self.append(LOGIN_FAILURE, str(user), {"reason": reason})

    def records(self, *, user: str | None = None, limit: int | None = None) -> list[AuditRecord]:
        """Records in id order; with ``limit``, the most recent ``limit`` of them."""
        self.flush()
        params: list[str | int] = []
        where = ""
        if user is not None:
            where, params = "WHERE user_name = ?", [user]
        sql = (f"SELECT id, at, kind, user_name, details, prev_hash, hash FROM audit_log"
               f" {where} ORDER BY id DESC")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self.store._pool.connection() as con:
            rows = con.execute(sql, params).fetchall()
        return [AuditRecord(i, at, kind, name, json.loads(details), prev, digest)
                for i, at, kind, name, details, prev, digest in reversed(rows)]

    def verify(self) -> Verification:
        """Walk the whole chain; report the first record edited or removed."""
        self.flush()
        expected_prev, expected_id, count = GENESIS, 1, 0
        with self.store._pool.connection() as con:
            rows = con.execute(
                "SELECT id, at, kind, user_name, details, prev_hash, hash FROM audit_log"
                " ORDER BY id")
            for record_id, at, kind, user, details, prev, digest in rows:
                if record_id != expected_id:
                    return Verification(count, expected_id,
                                        f"record {expected_id} is missing (deleted)")
                if prev != expected_prev:
                    return Verification(count, record_id,
                                        "its previous-hash does not match the record before it")
                if record_hash(prev, canonical(record_id, at, kind, user, details)) != digest:
                    return Verification(count, record_id, "its content does not match its hash")
                expected_prev, expected_id, count = digest, expected_id + 1, count + 1
            row = con.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
        if row is not None and int(row[0]) >= expected_id:
            return Verification(count, expected_id,
                                f"record {expected_id} is missing (deleted from the end)")
        return Verification(count)


def table_summary(record: AuditRecord) -> str:
    """A one-line summary of a record's details, for ``stockade audit show``."""
    d = record.details
    if record.kind == LOGIN_FAILURE:
        return f"reason={d.get('reason')}"
    parts = []
    if d.get("tables"):
        parts.append(",".join(f"{t['dataset']}.{t['table']}:{t['mode']}" for t in d["tables"]))
    if d.get("epsilon"):
        parts.append(f"ε={d['epsilon']:g}")
    if d.get("rows") is not None:
        parts.append(f"rows={d['rows']}")
    if d.get("duration_ms") is not None:
        parts.append(f"{d['duration_ms']:.0f}ms")
    if d.get("error"):
        parts.append(f"refused: {d['error']}")
    parts.append(str(d.get("sql", "")).replace("\n", " "))
    return "  ".join(parts)
