"""One engine interface over a domain whose datasets run on different engines.

A policy may put datasets on Spark (``engine: {type: spark, ...}``, see
docs/scaling.md) next to datasets on the domain's DuckDB engine.
:class:`RoutedEngine` has the reading interface of :class:`gateway.engine.Engine`
and sends each statement to the engine that owns the datasets it reads: the
SQL reaching an engine is the policy-rewritten SQL, in which every table is
qualified as ``dataset.table``, so the datasets are read off its tables. A
statement reading datasets of two engines is refused (there is no federation
between engines); one reading no dataset runs on DuckDB.

The ``dp`` code runs its SQL through :meth:`RoutedEngine.execute` and
:meth:`RoutedEngine.cursor`, so SmartNoise's queries over a Spark dataset run
on Spark.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import sqlglot
from sqlglot import exp

from connectors.base import SourcePlan
from gateway.engine import Engine, EngineLimits
from gateway.errors import InputError
from gateway.snapshots import BoundedSource


class _Reading(Protocol):
    """What :class:`RoutedEngine` needs of each engine it routes to."""

    work_dir: Path
    _plans: dict[tuple[str, str], SourcePlan]

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def retire(self) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def cursor(self) -> Any: ...
    def tables(self) -> Sequence[tuple[str, str]]: ...
    def columns(self, dataset: str, table: str) -> dict[str, str]: ...
    def arrow_schema(self, dataset: str, table: str) -> pa.Schema: ...
    def result_schema(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None
                      ) -> pa.Schema: ...
    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None, *,
                timeout_s: float | None = None, batch_rows: int = 65_536,
                prefetch: int = 2) -> pa.RecordBatchReader: ...


def datasets_read(sql: str) -> set[str]:
    """The (lower-cased) schema names of the qualified tables ``sql`` reads.

    >>> sorted(datasets_read('SELECT * FROM "a"."t" JOIN b.u ON true, cte'))
    ['a', 'b']
    """
    try:
        trees = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return set()  # the engine reports the syntax error
    out: set[str] = set()
    for tree in trees:
        if tree is None:
            continue
        for table in tree.find_all(exp.Table):
            if table.db:
                out.add(table.db.lower())
    return out


class _RoutedCursor:
    """A cursor that opens the owning engine's cursor for each statement."""

    def __init__(self, engine: RoutedEngine) -> None:
        self._engine = engine
        self._cursor: Any = None

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> _RoutedCursor:
        self.close()
        self._cursor = self._engine.route(sql).cursor()
        self._cursor.execute(sql, *args, **kwargs)
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> Any:
        return self._cursor.fetchall()

    def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            cursor.close()


class RoutedEngine:
    """The domain's DuckDB engine and the engines of its other datasets, as one."""

    def __init__(self, default: Engine, others: Mapping[str, tuple[str, _Reading]]) -> None:
        """``others``: dataset name → (engine type, engine) for datasets not on ``default``."""
        self.default = default
        self.work_dir = default.work_dir
        self.limits: EngineLimits = default.limits
        self._owners: dict[str, tuple[str, _Reading]] = {
            ds.lower(): owner for ds, owner in others.items()}
        self._engines: list[_Reading] = [default]
        for _, engine in others.values():
            if all(engine is not e for e in self._engines):
                self._engines.append(engine)
        self._plans: dict[tuple[str, str], SourcePlan] = {}
        for engine in self._engines:
            self._plans.update(engine._plans)
        self._routes: OrderedDict[str, _Reading] = OrderedDict()
        self._lock = threading.Lock()

    # -- routing ----------------------------------------------------------------------

    def route(self, sql: str) -> _Reading:
        """The engine that owns every dataset ``sql`` reads (DuckDB for none)."""
        with self._lock:
            found = self._routes.get(sql)
            if found is not None:
                self._routes.move_to_end(sql)
                return found
        owners: list[tuple[str, str]] = []
        engines: list[_Reading] = []
        for ds in sorted(datasets_read(sql)):
            kind, engine = self._owners.get(ds, ("duckdb", self.default))
            owners.append((ds, kind))
            if all(engine is not e for e in engines):
                engines.append(engine)
        if len(engines) > 1:
            where = ", ".join(f"{ds} on {kind}" for ds, kind in owners)
            raise InputError(f"This query reads datasets on different engines ({where}); "
                             "query them separately")
        target = engines[0] if engines else self.default
        with self._lock:
            self._routes[sql] = target
            while len(self._routes) > 1024:
                self._routes.popitem(last=False)
        return target

    def _for_table(self, dataset: str, table: str) -> _Reading:
        return self._owners.get(dataset.lower(), ("duckdb", self.default))[1]

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        for engine in self._engines:
            engine.close()

    def acquire(self) -> None:
        taken: list[_Reading] = []
        try:
            for engine in self._engines:
                engine.acquire()
                taken.append(engine)
        except BaseException:
            for engine in taken:
                engine.release()
            raise

    def release(self) -> None:
        for engine in self._engines:
            engine.release()

    @contextmanager
    def in_use(self) -> Iterator[RoutedEngine]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def retire(self) -> None:
        for engine in self._engines:
            engine.retire()

    @property
    def retired(self) -> bool:
        return self.default.retired

    @property
    def closed(self) -> bool:
        return self.default.closed

    # -- reading --------------------------------------------------------------------------

    def cursor(self) -> _RoutedCursor:
        return _RoutedCursor(self)

    def tables(self) -> Sequence[tuple[str, str]]:
        return [key for engine in self._engines for key in engine.tables()]

    @contextmanager
    def bounded_source(self, dataset: str, table: str) -> Iterator[BoundedSource | None]:
        """Always ``None``: ``dp`` queries of a routed domain sample in the query."""
        yield None

    def columns(self, dataset: str, table: str) -> dict[str, str]:
        return self._for_table(dataset, table).columns(dataset, table)

    def arrow_schema(self, dataset: str, table: str) -> pa.Schema:
        return self._for_table(dataset, table).arrow_schema(dataset, table)

    def result_schema(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> pa.Schema:
        return self.route(sql).result_schema(sql, parameters)

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        batch_rows: int = 65_536,
        prefetch: int = 2,
    ) -> pa.RecordBatchReader:
        return self.route(sql).execute(sql, parameters, timeout_s=timeout_s,
                                       batch_rows=batch_rows, prefetch=prefetch)
