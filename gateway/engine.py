"""The locked-down DuckDB database that runs analyst SQL.

At start the engine builds a small DuckDB file in the data directory holding one
view per policy table (``"<dataset>"."<table>"`` over the connector's source) and
the tables it had to copy (Arrow IPC files, in-process frames), then reopens it
**read-only** and locks it down (invariant 4):

- external access off, except the exact files and directories of the sources
  (DuckDB's ``allowed_paths`` / ``allowed_directories``) and the engine's own
  temp and ``dp-snapshots`` directories;
- extension autoload/autoinstall off, community extensions off;
- memory and thread limits, a private temp directory;
- configuration locked, so analyst SQL cannot undo any of it;
- ENUM columns served as VARCHAR, since an ENUM's type names its values
  (:mod:`gateway.source_types`).

For ``dp`` tables with a privacy unit whose source is files or a copy, the
engine also draws a per-unit sample once, attaches it read-only, and keeps it
in step with the source's content (:mod:`gateway.snapshots`,
:meth:`Engine.bounded_source`, :meth:`Engine.refresh_snapshots`).

Queries run on a ``cursor()`` of the one warm database; each has a timeout
enforced by interrupting its cursor. When the policy is replaced, the gateway
builds a new engine and :meth:`Engine.retire` s the old one: streams still
reading from it finish, and it closes (and deletes its directory) when the last
one ends. Engine errors are turned into :class:`gateway.errors.QueryFailedError`
(:func:`engine_error`; invariant 5: errors never carry values of protected data): a
fixed message of its class for an error raised while reading rows, the text scrubbed
of literals for an error about the SQL found while binding.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

import duckdb
import pyarrow as pa

from connectors._sql import identifier, string_literal
from connectors.base import SourcePlan
from gateway.errors import (
    ConfigError,
    ConnectorError,
    QueryFailedError,
    QueryTimeoutError,
    StockadeError,
)
from gateway.retiring import Retiring
from gateway.snapshots import (
    BoundedSnapshots,
    BoundedSource,
    BuildConfig,
    ContributionBound,
    SnapshotChange,
)
from gateway.source_types import plain_select
from policy.totality import DISABLED_OPTIMIZERS

log = logging.getLogger("stockade.engine")

_QUOTED_VALUE = re.compile(r"'(?:[^']|'')*'")
_DOUBLE_QUOTED = re.compile(r'"(?:[^"]|"")*"')
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w.])", re.IGNORECASE)
_SQL_CONTEXT = re.compile(r"\n\s*LINE \d+:.*", re.DOTALL)
# Errors whose message may quote a value of the data.
_VALUE_ERRORS = (
    duckdb.ConversionException,
    duckdb.OutOfRangeException,
    duckdb.InvalidInputException,
    duckdb.ConstraintException,
    duckdb.DataError,
)


# Secrets of live engines' sources (a DSN, a password) -> table -> how many engines use it
# (an engine being retired and its successor may serve the same table).
_SECRETS: dict[str, dict[str, int]] = {}
_SECRETS_LOCK = threading.Lock()
_CANNOT_CONNECT = re.compile(r"Unable to connect to \w+ at (?:<[^>]*>|\S+): ?")


def _register_secrets(plans: dict[tuple[str, str], SourcePlan], add: bool) -> None:
    with _SECRETS_LOCK:
        for (ds, table), plan in plans.items():
            for secret in plan.secrets:
                users = _SECRETS.setdefault(secret, {})
                label = f"{ds}.{table}"
                users[label] = users.get(label, 0) + (1 if add else -1)
                if users[label] <= 0:
                    del users[label]
                if not users:
                    del _SECRETS[secret]


def redact(message: str) -> tuple[str, list[str]]:
    """``message`` without any source secret, and the tables whose secret it held.

    >>> _register_secrets({("d", "t"): SourcePlan("", secrets=("postgresql://u:pw@h/x", "pw"))},
    ...                   True)
    >>> redact('Unable to connect to Postgres at "postgresql://u:pw@h/x": refused (pw)')
    ('Unable to connect to Postgres at <the DSN of d.t>: refused (<secret>)', ['d.t'])
    >>> _register_secrets({("d", "t"): SourcePlan("", secrets=("postgresql://u:pw@h/x", "pw"))},
    ...                   False)
    """
    with _SECRETS_LOCK:
        secrets = sorted(((k, set(v)) for k, v in _SECRETS.items()), key=lambda i: -len(i[0]))
    tables: set[str] = set()
    for secret, names in secrets:
        if secret and secret in message:
            tables.update(names)
            label = ("<the DSN of " + ", ".join(sorted(names)) + ">"
                     if len(secret) > 24 or "://" in secret or "=" in secret else "<secret>")
            message = message.replace(f'"{secret}"', label).replace(secret, label)
    return message, sorted(tables)


def scrub_message(message: str, *, values: bool) -> str:
    """Drop DuckDB's echo of the SQL text and, if ``values``, every literal.

    >>> scrub_message("Conversion Error: Could not convert string 'Alice' to INT32", values=True)
    "Conversion Error: Could not convert string '…' to INT32"
    >>> scrub_message("Overflow in multiplication of INT32 (2147483647 * 2)!", values=True)
    'Overflow in multiplication of INT32 (… * …)!'
    """
    message = _SQL_CONTEXT.sub("", message).strip()
    if values:
        # Value errors quote data in single or double quotes, and may repeat the
        # value on the lines below (with a caret): keep the first line, unquoted.
        message = message.split("\n", 1)[0].strip()
        message = _QUOTED_VALUE.sub("'…'", message)
        message = _DOUBLE_QUOTED.sub('"…"', message)
        message = _NUMBER.sub("…", message)
    return message


#: What an analyst is told when their query fails while it reads rows: one fixed text
#: per class of engine error (invariant 5). The engine's own text, which can quote a
#: value of the data (a conversion, a pattern, a time zone), goes to the audit log only.
RUNTIME_ERRORS: tuple[tuple[type[duckdb.Error], str], ...] = (
    (duckdb.ConversionException,
     "A value could not be converted to the type your query needs, on some row (a CAST, "
     "or a comparison or function that converts). Use TRY_CAST(x AS type) to get NULL "
     "instead of an error."),
    (duckdb.OutOfRangeException,
     "A computation in your query went out of range on some row (an overflow, or a value "
     "outside a function's domain such as ln(0)). Use TRY(expression) to get NULL instead "
     "of an error."),
    (duckdb.InvalidInputException,
     "A function in your query received an input it cannot handle, on some row (for "
     "example a regular expression, a format or a time zone built from the data). Use "
     "constant patterns and formats, or TRY(expression) to get NULL instead."),
    (duckdb.NotImplementedException,
     "A function in your query received an argument the engine does not support, on some "
     "row (for example an unknown time zone). Use constant arguments for such functions."),
)
RUNTIME_ERROR = "Your query failed while reading the data ({kind}). Simplify the expression " \
    "that fails, or wrap it in TRY(expression) to get NULL instead of an error."

#: Engine errors about the SQL text itself (names, types, syntax): raised while DuckDB
#: binds a query, before it reads a row, so their text depends on the SQL only.
_BIND_ERRORS = (duckdb.BinderException, duckdb.ParserException, duckdb.CatalogException)


def runtime_message(exc: duckdb.Error) -> str:
    """The fixed message for an engine error raised while reading rows.

    >>> runtime_message(duckdb.ConversionException("Could not convert string 'Alice'"))[:46]
    'A value could not be converted to the type you'
    >>> runtime_message(duckdb.ConstraintException("x = 'secret'"))
    'Your query failed while reading the data (Constraint error). Simplify the expression \
that fails, or wrap it in TRY(expression) to get NULL instead of an error.'
    """
    for kind, text in RUNTIME_ERRORS:
        if isinstance(exc, kind):
            return text
    name = type(exc).__name__.removesuffix("Exception").removesuffix("Error") or "Engine"
    return RUNTIME_ERROR.format(kind=f"{name} error")


def engine_error(exc: BaseException, *, timeout_s: float | None = None,
                 bound: bool = False) -> StockadeError:
    """The Stockade error for an exception raised by DuckDB.

    ``bound`` is false while DuckDB binds the query (it has read no row yet): an error
    about the SQL text (a name, a type, the syntax) then keeps its text, scrubbed of
    literals. Any other engine error becomes a fixed message of its class
    (:data:`RUNTIME_ERRORS`), never the engine's text, which is kept in the error's
    ``detail`` for the audit log.
    """
    if isinstance(exc, StockadeError):
        return exc
    if isinstance(exc, duckdb.InterruptException):
        return QueryTimeoutError(
            f"Query stopped after {timeout_s:g} s, the time limit for your role. "
            "Add filters or a LIMIT, or ask the data owner for a longer limit."
            if timeout_s
            else "Query was cancelled."
        )
    if isinstance(exc, duckdb.IOException | duckdb.PermissionException):
        text, tables = redact(str(exc))
        log.error("engine I/O error: %s", text)
        if tables and _CANNOT_CONNECT.search(text):
            reason = _CANNOT_CONNECT.sub("", text.split("\n", 1)[0]).removeprefix("IO Error: ")
            named = ("Table " if len(tables) == 1 else "Tables ") + ", ".join(map(repr, tables))
            return ConnectorError(
                f"{named} cannot be read right now: cannot connect to "
                f"{'its' if len(tables) == 1 else 'their'} database ({reason.strip()}). "
                "The data owner has been told (see the server log)."
            )
        return ConnectorError("A data source of this domain cannot be read right now; "
                              "the data owner has been told (see the server log).")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return QueryFailedError("The query needs more memory than this domain allows; "
                                "aggregate, filter or add a LIMIT.")
    if isinstance(exc, duckdb.Error):
        detail = redact(str(exc))[0]
        if not bound and isinstance(exc, _BIND_ERRORS):
            return QueryFailedError(scrub_message(detail, values=False), detail=detail)
        return QueryFailedError(runtime_message(exc), detail=detail)
    raise exc


def _params(parameters: Sequence[Any] | Mapping[str, Any] | None) -> Any:
    """DuckDB's ``params``: a list (positional), a dict (named ``$name``), or None."""
    if not parameters:
        return None
    return dict(parameters) if isinstance(parameters, Mapping) else list(parameters)


class Watchdog:
    """One thread that interrupts cursors whose deadline has passed.

    Cheaper than a timer thread per query (the round trip of a small query matters).
    """

    def __init__(self) -> None:
        self._deadlines: dict[int, tuple[float, duckdb.DuckDBPyConnection]] = {}
        self._next = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, timeout_s: float, cursor: duckdb.DuckDBPyConnection) -> int:
        with self._cond:
            self._next += 1
            self._deadlines[self._next] = (time.monotonic() + timeout_s, cursor)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stockade-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._next

    def disarm(self, handle: int) -> None:
        with self._cond:
            self._deadlines.pop(handle, None)

    def stop(self) -> None:
        """End the thread (the engine is closed: nothing is left to interrupt)."""
        with self._cond:
            self._stopped = True
            self._deadlines.clear()
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for handle, (deadline, cursor) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[handle]
                        try:
                            cursor.interrupt()
                        except duckdb.Error:  # pragma: no cover - cursor already closed
                            pass
                soonest = min((d for d, _ in self._deadlines.values()), default=now + 3600)
                self._cond.wait(max(soonest - now, 0.001))


@dataclass(frozen=True)
class EngineLimits:
    """Resource limits of the analyst-facing DuckDB database.

    ``dp_snapshot_check_s``: how often the sources of bounded ``dp`` snapshots are
    hashed again (0: only on :meth:`Engine.refresh_snapshots`); see
    :mod:`gateway.snapshots`.
    """

    memory_limit: str = "4GB"
    threads: int = 2
    max_temp_directory_size: str = "20GB"
    dp_snapshot_check_s: float = 60.0


class Engine(Retiring):
    """The locked, read-only DuckDB database of one domain."""

    def __init__(self, work_dir: Path, *, limits: EngineLimits | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.limits = limits or EngineLimits()
        self._plans: dict[tuple[str, str], SourcePlan] = {}
        self._con: duckdb.DuckDBPyConnection | None = None
        self._init_retiring()
        self._watchdog = Watchdog()
        self._secrets_registered = False
        self._snapshots = BoundedSnapshots(self.work_dir / "dp-snapshots", BuildConfig(
            extension_directory=str(self.work_dir / "extensions"),
            threads=self.limits.threads, memory_limit=self.limits.memory_limit))

    # -- building -------------------------------------------------------------------

    def add_table(self, dataset: str, table: str, plan: SourcePlan, *,
                  bound: ContributionBound | None = None) -> None:
        """Serve ``plan`` as ``dataset.table``; ``bound``: the table is read in ``dp``
        mode with that privacy unit, so keep a bounded snapshot of it if its source
        allows (:mod:`gateway.snapshots`)."""
        if self._con is not None:
            raise RuntimeError("tables are added before the engine starts")
        self._plans[(dataset, table)] = plan
        if bound is not None:
            self._snapshots.add(dataset, table, plan, bound)

    def start(self) -> None:
        """Build the view database, reopen it read-only and lock it down."""
        try:
            self._start()
        except BaseException:
            if self._secrets_registered and self._con is None:
                self._secrets_registered = False
                _register_secrets(self._plans, False)
            raise

    def _start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        db_path = self.work_dir / "engine.duckdb"
        temp_dir = self.work_dir / "engine-tmp"
        for stale in (db_path, self.work_dir / "engine.duckdb.wal"):
            stale.unlink(missing_ok=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.mkdir()

        ext_dir = self.work_dir / "extensions"
        _register_secrets(self._plans, True)
        self._secrets_registered = True
        build = duckdb.connect(str(db_path), config={"autoload_known_extensions": False,
                                                      "autoinstall_known_extensions": False,
                                                      "extension_directory": str(ext_dir)})
        try:
            self._load_extensions(build, install=True)
            self._run_setup(build)
            for ds in sorted({ds for ds, _ in self._plans}):
                build.execute(f"CREATE SCHEMA {identifier(ds)}")
            for (ds, table), plan in self._plans.items():
                name = f"{identifier(ds)}.{identifier(table)}"
                try:
                    # ENUM columns are served as VARCHAR: an ENUM's type names its
                    # values, and DuckDB prints types in errors (gateway.source_types).
                    if plan.arrow is not None:
                        build.register("__stockade_arrow", plan.arrow)
                        select = plain_select(build, "SELECT * FROM __stockade_arrow")
                        build.execute(f"CREATE TABLE {name} AS {select}")
                        build.unregister("__stockade_arrow")
                    else:
                        build.execute(f"CREATE VIEW {name} AS {plain_select(build, plan.select)}")
                        build.execute(f"SELECT * FROM {name} LIMIT 0")
                except duckdb.Error as exc:
                    raise _source_error("read", ds, table, plan, exc) from None
            build.execute("CHECKPOINT")
        finally:
            build.close()
        self._snapshots.build()

        paths = sorted({p for plan in self._plans.values() for p in plan.allowed_paths})
        dirs = sorted({d for plan in self._plans.values() for d in plan.allowed_directories})
        dirs.append(str(temp_dir) + "/")
        dirs.append(str(self._snapshots.directory) + "/")
        con = duckdb.connect(str(db_path), read_only=True, config={
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "extension_directory": str(ext_dir),
        })
        try:
            self._load_extensions(con, install=False)
            self._run_setup(con)
            for statement in (
                f"SET memory_limit = {string_literal(self.limits.memory_limit)}",
                f"SET threads = {int(self.limits.threads)}",
                f"SET temp_directory = {string_literal(str(temp_dir))}",
                "SET max_temp_directory_size = "
                f"{string_literal(self.limits.max_temp_directory_size)}",
                f"SET allowed_paths = [{', '.join(string_literal(p) for p in paths)}]",
                f"SET allowed_directories = [{', '.join(string_literal(d) for d in dirs)}]",
                "SET enable_external_access = false",
                "SET allow_community_extensions = false",
                # They raise errors outside the TRY(...) that makes a dp
                # expression total (policy.totality).
                "SET disabled_optimizers = "
                f"{string_literal(','.join(DISABLED_OPTIMIZERS))}",
                "SET lock_configuration = true",
            ):
                con.execute(statement)
        except ConnectorError:
            con.close()
            raise
        except (duckdb.Error, ValueError) as exc:
            con.close()
            raise ConfigError(f"Cannot configure the engine: {redact(str(exc))[0]}") from None
        self._con = con
        try:
            self._snapshots.open(self._statement)
        except BaseException:
            self._con = None
            con.close()
            raise
        self._snapshots.start_checks(self.limits.dp_snapshot_check_s, self.refresh_snapshots)
        # Warm the database: the first query on a fresh database is slow.
        self.cursor().execute("SELECT 1").fetchall()

    def _statement(self, sql: str) -> None:
        """Run one statement of the gateway's own (never analyst SQL) on the engine."""
        cur = self.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()

    def _load_extensions(self, con: duckdb.DuckDBPyConnection, *, install: bool) -> None:
        """Load the extensions the sources need from their pip wheels (no network).

        The build installs them into the engine's own extension directory; the
        read-only engine loads them from there before it is locked (after which
        no extension can be loaded).
        """
        names = sorted({name for plan in self._plans.values() for name in plan.extensions})
        for name in names:
            try:
                if install:
                    from duckdb_extensions import import_extension

                    import_extension(name, con=con)
                con.execute(f"LOAD {identifier(name)}")
            except (ImportError, duckdb.Error) as exc:
                raise ConnectorError(
                    f"Cannot load the DuckDB extension '{name}' "
                    f"(pip install duckdb-extension-{name.replace('_', '-')}): {exc}"
                ) from None

    def _run_setup(self, con: duckdb.DuckDBPyConnection) -> None:
        for (ds, table), plan in self._plans.items():
            for statement in plan.setup:
                try:
                    con.execute(statement)
                except duckdb.Error as exc:
                    raise _source_error("open", ds, table, plan, exc) from None

    def close(self) -> None:
        self._snapshots.stop()
        with self._lock:
            con, self._con = self._con, None
            registered, self._secrets_registered = self._secrets_registered, False
        if con is not None:
            con.close()
        if registered:
            _register_secrets(self._plans, False)
        self._watchdog.stop()

    # -- retiring -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._con is None


    # -- reading --------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                raise RuntimeError("engine not started or already closed")
            return self._con.cursor()

    def tables(self) -> Sequence[tuple[str, str]]:
        return list(self._plans)

    # -- dp snapshots -----------------------------------------------------------------

    @contextmanager
    def bounded_source(self, dataset: str, table: str) -> Iterator[BoundedSource | None]:
        """The bounded snapshot a ``dp`` query of ``dataset.table`` reads, or ``None``.

        ``None``: the source is live (or has no snapshot), the query must bound
        rows per unit itself. The snapshot (its SQL reference ``.sql``, ``.unit``
        and ``.max_rows``) stays readable until the ``with`` block ends, even if a
        newer one replaces it meanwhile (see :mod:`gateway.snapshots`).
        """
        with self.in_use(), self._snapshots.lease(dataset, table) as source:
            yield source

    def refresh_snapshots(self) -> list[SnapshotChange]:
        """Hash the sources of the snapshots again; rebuild and swap those that changed."""
        with self.in_use():
            return self._snapshots.refresh()

    def columns(self, dataset: str, table: str) -> dict[str, str]:
        """Column name → DuckDB type name of a source table, in order."""
        with self.in_use():
            cur = self.cursor()
            try:
                rows = cur.execute(
                    f"DESCRIBE SELECT * FROM {identifier(dataset)}.{identifier(table)}"
                ).fetchall()
            finally:
                cur.close()
        return {row[0]: row[1] for row in rows}

    def arrow_schema(self, dataset: str, table: str) -> pa.Schema:
        return self.result_schema(f"SELECT * FROM {identifier(dataset)}.{identifier(table)}")

    def result_schema(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> pa.Schema:
        """The Arrow schema of ``sql``'s result, without running it."""
        with self.in_use():
            cur = self.cursor()
            try:
                rel = cur.sql(sql, params=_params(parameters))
                return rel.limit(0).to_arrow_table().schema
            except duckdb.Error as exc:  # LIMIT 0 reads no row: a binding error
                raise engine_error(exc) from None
            finally:
                cur.close()

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        batch_rows: int = 65_536,
        prefetch: int = 2,
    ) -> pa.RecordBatchReader:
        """Run ``sql`` and stream its result; the timeout covers the whole stream.

        At most ``prefetch`` batches wait in memory ahead of the consumer. The
        stream counts as a user of the engine (see :meth:`retire`) until it ends,
        is closed, or is dropped unread.
        """
        self.acquire()
        try:
            cur = self.cursor()
        except BaseException:
            self.release()
            raise
        watch = self._watchdog.arm(timeout_s, cur) if timeout_s else None
        started = time.monotonic()
        bound = False
        try:
            rel = cur.sql(sql, params=_params(parameters))
            bound = True  # from here on, DuckDB reads rows
            reader = rel.to_arrow_reader(batch_rows)
        except BaseException as exc:
            if watch is not None:
                self._watchdog.disarm(watch)
            cur.close()
            self.release()
            if isinstance(exc, duckdb.Error):
                raise engine_error(exc, timeout_s=timeout_s, bound=bound) from None
            raise

        def fail(exc: BaseException) -> StockadeError:
            expired = timeout_s and time.monotonic() - started >= timeout_s
            if expired:
                return engine_error(duckdb.InterruptException(), timeout_s=timeout_s)
            if isinstance(exc, duckdb.Error):
                return engine_error(exc, timeout_s=timeout_s, bound=True)
            return QueryFailedError(RUNTIME_ERROR.format(kind=type(exc).__name__),
                                    detail=redact(str(exc))[0])

        # DuckDB computes the next batches on a producer thread while the current
        # one is being sent: the queue bounds what is held in memory.
        queue: Queue[pa.RecordBatch | BaseException | None] = Queue(maxsize=prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                while not stop.is_set():
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    while not stop.is_set():
                        try:
                            queue.put(batch, timeout=0.1)
                            break
                        except Full:
                            continue
            except BaseException as exc:  # handed to the consumer
                queue.put(exc)
                return
            queue.put(None)

        producer = threading.Thread(target=produce, name="stockade-query", daemon=True)

        end = _StreamEnd(self, reader, cur, watch)

        def batches() -> Iterator[pa.RecordBatch]:
            end.started = True
            try:
                # Small results (one or two batches) are read inline: a thread per
                # query would cost more than it saves.
                for _ in range(2):
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    except (duckdb.Error, pa.ArrowException) as exc:
                        raise fail(exc) from None
                    yield batch
                producer.start()
                while True:
                    item = queue.get()
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        if isinstance(item, duckdb.Error | pa.ArrowException):
                            raise fail(item) from None
                        raise item
                    yield item
            finally:
                stop.set()
                if producer.is_alive():
                    cur.interrupt()
                    while producer.is_alive():
                        try:
                            queue.get(timeout=0.05)
                        except Empty:
                            pass
                    producer.join()
                end()

        stream = batches()
        # A generator dropped before it started runs no ``finally``.
        weakref.finalize(stream, end.if_unread).atexit = False
        return pa.RecordBatchReader.from_batches(reader.schema, stream)



def _source_error(verb: str, ds: str, table: str, plan: SourcePlan,
                  exc: duckdb.Error) -> ConnectorError:
    """The error for a source that cannot be opened or read at build time, secrets removed."""
    text, _ = redact(scrub_message(str(exc), values=False))
    for secret in plan.secrets:
        text = text.replace(secret, "<secret>")
    if _CANNOT_CONNECT.search(text):
        reason = _CANNOT_CONNECT.sub("", text.split("\n", 1)[0]).removeprefix("IO Error: ")
        return ConnectorError(f"Table '{ds}.{table}' ({plan.description}): cannot connect "
                              f"to its database ({reason.strip()})")
    return ConnectorError(f"Cannot {verb} the source of table '{ds}.{table}' "
                          f"({plan.description}): {text}")


class _StreamEnd:
    """Frees what one stream holds and stops counting it as a user of its engine, once."""

    def __init__(self, engine: Engine, reader: Any, cursor: duckdb.DuckDBPyConnection,
                 watch: int | None) -> None:
        self.engine = engine
        self.reader = reader
        self.cursor = cursor
        self.watch = watch
        self.started = False
        self._done = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        try:
            if self.watch is not None:
                self.engine._watchdog.disarm(self.watch)
            self.reader.close()
            self.cursor.close()
        finally:
            self.engine.release()

    def if_unread(self) -> None:
        """At garbage collection: a stream that started ends in its own ``finally``."""
        if not self.started:
            self()
