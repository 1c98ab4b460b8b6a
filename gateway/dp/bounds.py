"""Does the data already meet the query's bounds? Checked, not assumed.

Two bounds make work in a ``dp`` query needless when the data already meets them:
the rows per privacy unit (the sample) and a column's ``lower``/``upper`` (the
clamp). Both are checked on the source, once per version of it.

Is every privacy unit's row count within ``max_rows_per_unit``?

SmartNoise keeps each unit to ``max_ids`` rows by a per-unit random sample (a
window over the whole table, the most expensive part of a ``dp`` query). The
sample can be skipped only when the data *already* has at most
``max_rows_per_unit`` rows per unit. :class:`UnitBounds` checks that once per
version of the table's source and remembers it:

- the version is a **fingerprint** of the source (size, modification time and
  inode of every file the engine reads for it; a table copied into the engine at
  start never changes while the engine runs); a source with no fingerprint (a
  PostgreSQL table) is never trusted, so its queries always sample;
- the check runs on the raw source table: row filters only remove rows and the
  relation keeps the raw unit, so a bound on the source holds for every
  principal's relation;
- a query that skipped the sample is trusted only if the fingerprint is the
  verified one both before and after it ran (:meth:`UnitBounds.still_valid`);
  otherwise the caller runs it again with the sample.

Likewise :meth:`UnitBounds.verify_range` checks that every value of a source
column lies within the policy's ``lower``/``upper`` (``NULL`` allowed, ``NaN``
not): clamping such a column changes nothing, so the query may read it
unclamped while the fingerprint holds (:mod:`gateway.dp.reader`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path

from connectors._sql import identifier
from gateway.engine import Engine, engine_error

Fingerprint = Callable[[str, str], Hashable | None]


def _stat(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)


def engine_fingerprint(engine: Engine) -> Fingerprint:
    """The fingerprint of a table's source as the engine reads it (see the module doc)."""
    plans = engine._plans  # the engine's own table of sources, fixed once it started

    def fingerprint(dataset: str, table: str) -> Hashable | None:
        plan = plans.get((dataset, table))
        if plan is None:
            return None
        if plan.arrow is not None:
            return ("engine copy", id(engine))
        if not plan.allowed_paths and not plan.allowed_directories:
            return None  # a database server: no cheap way to know it did not change
        files: list[tuple[str, int, int, int] | None] = [_stat(p) for p in plan.allowed_paths]
        for directory in plan.allowed_directories:
            files.append(_stat(directory))
            for path in sorted(Path(directory).rglob("*")):
                files.append(_stat(str(path)))
        if any(f is None for f in files):
            return None
        return tuple(files)

    return fingerprint


class UnitBounds:
    """Remembers which sources were checked to have at most N rows per unit."""

    def __init__(self, engine: Engine, fingerprint: Fingerprint | None = None) -> None:
        self.engine = engine
        self.fingerprint = fingerprint or engine_fingerprint(engine)
        self._verified: dict[tuple[str, str, str, int], Hashable] = {}
        self._ranges: dict[tuple[str, str, str, str, float, float], Hashable] = {}
        self._lock = threading.Lock()
        self.checks = 0

    def verify(self, dataset: str, table: str, unit: str, max_rows: int) -> Hashable | None:
        """A token if the source has at most ``max_rows`` rows per unit, else ``None``."""
        token = self.fingerprint(dataset, table)
        if token is None:
            return None
        key = (dataset, table, unit, max_rows)
        with self._lock:
            if self._verified.get(key) == token:
                return token
        sql = (f"SELECT count(*) FROM (SELECT 1 FROM {identifier(dataset)}.{identifier(table)} "
               f"GROUP BY {identifier(unit)} HAVING count(*) > {int(max_rows)} LIMIT 1)")
        cur = self.engine.cursor()
        try:
            row = cur.execute(sql).fetchone()
        except Exception as exc:  # an engine error; the caller samples instead
            raise engine_error(exc) from None
        finally:
            cur.close()
        self.checks += 1
        if row is None or row[0] != 0 or self.fingerprint(dataset, table) != token:
            return None
        with self._lock:
            self._verified[key] = token
        return token

    def verify_range(self, dataset: str, table: str, column: str, lower: float,
                     upper: float) -> Hashable | None:
        """A token if every value of ``column`` is within [lower, upper], else ``None``."""
        if not (math.isfinite(lower) and math.isfinite(upper)):
            return None
        token = self.fingerprint(dataset, table)
        if token is None:
            return None
        key = ("range", dataset, table, column, float(lower), float(upper))
        with self._lock:
            if self._ranges.get(key) == token:
                return token
        # NaN >= lower holds in DuckDB but NaN <= upper does not: NaN is outside.
        c = identifier(column)
        sql = (f"SELECT count(*) FROM {identifier(dataset)}.{identifier(table)} "
               f"WHERE NOT ({c} >= {float(lower)!r} AND {c} <= {float(upper)!r})")
        cur = self.engine.cursor()
        try:
            row = cur.execute(sql).fetchone()
        except Exception:  # not comparable with numbers: keep the clamp
            return None
        finally:
            cur.close()
        self.checks += 1
        if row is None or row[0] != 0 or self.fingerprint(dataset, table) != token:
            return None
        with self._lock:
            self._ranges[key] = token
        return token

    def still_valid(self, dataset: str, table: str, token: Hashable) -> bool:
        """Whether the source is still the version ``token`` stands for."""
        return self.fingerprint(dataset, table) == token
