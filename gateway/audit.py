"""The audit log: append-only, hash-chained records in the state store.

Every query (who, their role, the SQL as sent, the rewritten SQL as shown to
people — secrets written ``{secret.NAME}`` —, the decision per table, ε/δ
charged, rows returned, duration, the error if refused), every failed login and
every action that changes the domain (kind ``admin``: the action, its body with
passwords and policy texts left out, whether it succeeded) is one row of the
``audit_log`` table. :meth:`AuditLog.query` reads it back newest first through an
:class:`AuditFilter`; :func:`export_csv` and :func:`export_jsonl` write records out.

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

import csv
import hashlib
import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.state import StateStore

log = logging.getLogger("stockade.audit")

#: The ``prev_hash`` of the first record.
GENESIS = hashlib.sha256(b"stockade audit log genesis").hexdigest()

QUERY = "query"
LOGIN_FAILURE = "login_failure"
ADMIN = "admin"
#: Every kind of record.
KINDS = (QUERY, LOGIN_FAILURE, ADMIN)


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


#: Longest text an admin record keeps of one body value; longer text is cut.
MAX_BODY_TEXT = 4000


def redact(value: Any) -> Any:
    """What an admin record keeps of an action body.

    A ``password`` becomes ``"***"``, a ``yaml`` text (a whole policy) its
    SHA-256 and size, and very long text is cut.

    >>> kept = redact({"name": "bob", "password": "hunter22", "yaml": "version: 1\\n"})
    >>> kept["name"], kept["password"], kept["yaml"]["bytes"], len(kept["yaml"]["sha256"])
    ('bob', '***', 11, 64)
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "password":
                out[key] = "***"
            elif key == "yaml" and isinstance(item, str):
                data = item.encode()
                out[key] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str) and len(value) > MAX_BODY_TEXT:
        return value[:MAX_BODY_TEXT] + f"… ({len(value)} characters)"
    return value


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


#: SQL true for a record (query or admin) with an error: refused or failed.
REFUSED = "json_extract(details, '$.error') IS NOT NULL"


@dataclass(frozen=True)
class AuditFilter:
    """Which records :meth:`AuditLog.query` returns; every field narrows the set.

    ``since`` is inclusive and ``until`` exclusive (epoch seconds); ``contains``
    matches the user, the SQL or any detail, ignoring ASCII case; ``refused`` True keeps
    refused or failed queries and actions and login failures, False the rest;
    ``before_id`` keeps records older than that id (paging).

    >>> AuditFilter(user="ann", refused=True).sql()[1]
    ['ann', 'login_failure']
    """

    user: str | None = None
    kind: str | None = None
    since: float | None = None
    until: float | None = None
    contains: str | None = None
    refused: bool | None = None
    before_id: int | None = None

    def sql(self) -> tuple[str, list[Any]]:
        """The WHERE clause (parameterised) and its parameters."""
        where: list[str] = []
        params: list[Any] = []
        if self.user is not None:
            where.append("user_name = ?")
            params.append(self.user)
        if self.kind is not None:
            where.append("kind = ?")
            params.append(self.kind)
        if self.since is not None:
            where.append("at >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append("at < ?")
            params.append(self.until)
        if self.contains is not None:
            # The details are JSON text: look for the text as written and as JSON
            # escapes it (quotes, backslashes, newlines).
            escaped = json.dumps(self.contains, ensure_ascii=False)[1:-1]
            where.append("(instr(lower(details), lower(?)) > 0"
                         " OR instr(lower(details), lower(?)) > 0"
                         " OR instr(lower(user_name), lower(?)) > 0)")
            params.extend([self.contains, escaped, self.contains])
        if self.refused is not None:
            refused = f"(kind = ? OR {REFUSED})"
            where.append(refused if self.refused else f"NOT {refused}")
            params.append(LOGIN_FAILURE)
        if self.before_id is not None:
            where.append("id < ?")
            params.append(self.before_id)
        return (" AND ".join(where) or "1"), params


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

    def login_failure(self, user: str, reason: str, address: str | None = None) -> None:
        """Record a failed login (``reason`` as given by the authenticator, and the
        client's ``address`` when the login was checked where it is known)."""
        details: dict[str, Any] = {"reason": reason}
        if address is not None:
            details["address"] = address
        self.append(LOGIN_FAILURE, str(user), details)

    def admin_action(self, user: str, role: str, action: str, body: Mapping[str, Any] | None,
                     error: str | None) -> int:
        """Record an action that changes the domain (or was refused), ``body`` redacted."""
        return self.append(ADMIN, user, {
            "action": action, "role": role,
            "body": None if body is None else redact(body),
            "ok": error is None, "error": error,
        })

    def _select(self, sql: str, params: Sequence[Any]) -> list[AuditRecord]:
        self.flush()
        with self.store._pool.connection() as con:
            rows = con.execute(sql, tuple(params)).fetchall()
        return [AuditRecord(i, at, kind, name, json.loads(details), prev, digest)
                for i, at, kind, name, details, prev, digest in rows]

    def query(self, where: AuditFilter | None = None, *, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` records that match ``where``, newest first."""
        clause, params = (where or AuditFilter()).sql()
        return self._select(
            "SELECT id, at, kind, user_name, details, prev_hash, hash FROM audit_log"
            f" WHERE {clause} ORDER BY id DESC LIMIT ?", [*params, int(limit)])

    def count(self, where: AuditFilter | None = None) -> int:
        """How many records match ``where``."""
        clause, params = (where or AuditFilter()).sql()
        self.flush()
        with self.store._pool.connection() as con:
            (n,) = con.execute(f"SELECT COUNT(*) FROM audit_log WHERE {clause}",
                               tuple(params)).fetchone()
        return int(n)

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
    """A one-line summary of a record's details, for ``stockade audit show``.

    >>> r = AuditRecord(1, 0.0, ADMIN, "owner", {"action": "stockade.users.create",
    ...     "body": {"name": "bob", "password": "***"}, "ok": False,
    ...     "error": "User 'bob' already exists."}, GENESIS, "")
    >>> print(table_summary(r))
    stockade.users.create  {"name":"bob","password":"***"}  refused: User 'bob' already exists.
    """
    d = record.details
    if record.kind == LOGIN_FAILURE:
        return f"reason={d.get('reason')}"
    if record.kind == ADMIN:
        body = json.dumps(d.get("body"), separators=(",", ":"), ensure_ascii=False)
        if len(body) > 200:
            body = body[:199] + "…"
        parts = [str(d.get("action")), body]
        if d.get("error"):
            parts.append(f"refused: {d['error']}")
        return "  ".join(parts)
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


# ---------------------------------------------------------------- export

#: The columns of :func:`export_csv`; ``details`` holds, as JSON, the details of
#: records other than queries (an admin action and its body, a login failure's reason).
EXPORT_COLUMNS = ("id", "time", "kind", "user", "sql", "tables", "epsilon", "delta", "rows",
                  "duration_ms", "error", "hash", "details")


def export_csv(records: Iterable[AuditRecord]) -> str:
    """``records`` as CSV with a header row (:data:`EXPORT_COLUMNS`).

    >>> r = AuditRecord(3, 0.0, LOGIN_FAILURE, "mallory", {"reason": "unknown_user"}, "", "ab")
    >>> print(export_csv([r]), end="")
    id,time,kind,user,sql,tables,epsilon,delta,rows,duration_ms,error,hash,details
    3,1970-01-01T00:00:00.000+00:00,login_failure,mallory,,,,,,,,ab,"{""reason"":""unknown_user""}"
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for record in records:
        d = record.details
        tables = ";".join(f"{t['dataset']}.{t['table']}:{t['mode']}"
                          for t in d.get("tables") or ())
        extra = "" if record.kind == QUERY else _details_json(d)
        writer.writerow([record.id, record.time, record.kind, record.user, _cell(d.get("sql")),
                         tables, _cell(d.get("epsilon")), _cell(d.get("delta")),
                         _cell(d.get("rows")), _cell(d.get("duration_ms")),
                         _cell(d.get("error")), record.hash, extra])
    return out.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def export_jsonl(records: Iterable[AuditRecord]) -> str:
    """``records`` as JSON lines, one :meth:`AuditRecord.to_json` per line."""
    return "".join(json.dumps(r.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
                   for r in records)
