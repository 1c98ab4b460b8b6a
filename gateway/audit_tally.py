"""Counts of the audit log's query records per hour, kept up to date incrementally.

The owner's status and statistics (``stockade.status``, ``stockade.audit.stats``)
ask how many queries there were, how many were refused, in the last 24 hours and
per day. Counting them from scratch reads every record; the log only grows, so
:class:`AuditTally` reads each record once, adds it to the bucket of its UTC hour,
and answers from the buckets. A count from a time inside an hour reads only
that hour's records, found by their id range.

>>> import tempfile
>>> from gateway.state import StateStore
>>> with tempfile.TemporaryDirectory() as data_dir:
...     with StateStore(data_dir) as store:
...         log = AuditLog(store)
...         _ = log.append("query", "ann", {"sql": "SELECT 1", "error": None})
...         _ = log.append("query", "ann", {"sql": "DROP TABLE t", "error": "refused"})
...         log.login_failure("mallory", "unknown_user")
...         tally = AuditTally(log)
...         counts = tally.counts(since=0.0)
...         _ = log.append("query", "bob", {"sql": "SELECT 2", "error": None})
...         print(counts, tally.counts(since=0.0)["total"])
{'records': 3, 'total': 2, 'refused': 1, 'since': 2} 3
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.audit import QUERY, REFUSED, AuditLog

HOUR_S = 3600


@dataclass
class _Hour:
    """The query records of one UTC hour: their id range and counts."""

    first_id: int
    last_id: int
    queries: int = 0
    refused: int = 0


class AuditTally:
    """Query counts of one :class:`AuditLog`, per UTC hour."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self._lock = threading.Lock()
        self._counted_to = 0  # the last record id counted
        self._records = 0
        self._hours: dict[int, _Hour] = {}

    def _update(self) -> None:
        """Count the records written since the last call (call with the lock held)."""
        self.log.flush()
        with self.log.store._pool.connection() as con:
            rows = con.execute(
                "SELECT CAST(at / ? AS INTEGER) AS hour, MIN(id), MAX(id), COUNT(*),"
                " COALESCE(SUM(kind = ?), 0),"
                f" COALESCE(SUM(kind = ? AND {REFUSED}), 0)"
                " FROM audit_log WHERE id > ? GROUP BY hour",
                (HOUR_S, QUERY, QUERY, self._counted_to)).fetchall()
        for hour, first, last, records, queries, refused in rows:
            bucket = self._hours.setdefault(int(hour), _Hour(int(first), int(last)))
            bucket.first_id = min(bucket.first_id, int(first))
            bucket.last_id = max(bucket.last_id, int(last))
            bucket.queries += int(queries)
            bucket.refused += int(refused)
            self._records += int(records)
            self._counted_to = max(self._counted_to, int(last))

    def _partial(self, bucket: _Hour, since: float) -> tuple[int, int]:
        """(queries, refused) of ``bucket``'s records at or after ``since``."""
        with self.log.store._pool.connection() as con:
            queries, refused = con.execute(
                f"SELECT COUNT(*), COALESCE(SUM({REFUSED}), 0) FROM audit_log"
                " WHERE id BETWEEN ? AND ? AND kind = ? AND at >= ? AND at < ?",
                (bucket.first_id, bucket.last_id, QUERY, since,
                 (int(since // HOUR_S) + 1) * HOUR_S)).fetchone()
        return int(queries), int(refused)

    def _since(self, since: float) -> dict[int, tuple[int, int]]:
        """Hour → (queries, refused) of the records at or after ``since``."""
        start = int(since // HOUR_S)
        out = {hour: (b.queries, b.refused) for hour, b in self._hours.items() if hour > start}
        if start in self._hours:
            out[start] = self._partial(self._hours[start], since)
        return out

    def counts(self, *, since: float) -> dict[str, int]:
        """Records in all; queries in all, refused, and at or after ``since`` (epoch s)."""
        with self._lock:
            self._update()
            recent = self._since(since)
            return {"records": self._records,
                    "total": sum(b.queries for b in self._hours.values()),
                    "refused": sum(b.refused for b in self._hours.values()),
                    "since": sum(queries for queries, _ in recent.values())}

    def per_day(self, *, since: float) -> dict[str, tuple[int, int]]:
        """UTC day (``YYYY-MM-DD``) → (queries, refused), of the records from ``since`` on."""
        with self._lock:
            self._update()
            recent = self._since(since)
        out: dict[str, tuple[int, int]] = {}
        for hour, (queries, refused) in sorted(recent.items()):
            day = datetime.fromtimestamp(hour * HOUR_S, UTC).date().isoformat()
            before = out.get(day, (0, 0))
            out[day] = (before[0] + queries, before[1] + refused)
        return out


_tallies: weakref.WeakKeyDictionary[AuditLog, AuditTally] = weakref.WeakKeyDictionary()
_tallies_lock = threading.Lock()


def tally(log: AuditLog) -> AuditTally:
    """The one :class:`AuditTally` of ``log``."""
    with _tallies_lock:
        found = _tallies.get(log)
        if found is None:
            found = _tallies[log] = AuditTally(log)
        return found
