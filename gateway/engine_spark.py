"""An engine that runs the policy-rewritten SQL on Apache Spark instead of DuckDB.

:class:`SparkEngine` has the reading interface of :class:`gateway.engine.Engine`
(``tables``, ``columns``, ``arrow_schema``, ``result_schema``, ``execute`` with a
timeout, ``acquire``/``release``/``in_use``/``retire``), so the policy pipeline
and the ``dp`` planner run unchanged over it:

- each table is registered in Spark's catalog as ``dataset.table``: file
  sources (``parquet``, ``csv``, ``json``) as external tables over their files
  (nothing is copied); sources the connectors hand over as Arrow (``arrow``
  files, in-process frames) as managed tables in the engine's own warehouse;
- the SQL it is given is DuckDB SQL (what the policy pipeline produces); it is
  transpiled by sqlglot to Spark SQL and the result comes back as Arrow;
- once the tables are registered, Spark's direct file queries
  (``SELECT * FROM parquet.`/path```) are turned off for the session.

What Spark cannot lock like DuckDB (there is no ``lock_configuration``) is
described in ``docs/scaling.md``: analyst SQL only ever reaches the engine
after the policy rewrite, which only admits the registered tables.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from connectors.base import SourcePlan
from connectors.files import resolve_path
from gateway.engine import RUNTIME_ERROR, scrub_message
from gateway.errors import ConfigError, ConnectorError, QueryFailedError, QueryTimeoutError
from gateway.retiring import Retiring
from gateway.snapshots import BoundedSource

log = logging.getLogger("stockade.engine_spark")

#: Source formats Spark reads in place, and the policy keys passed as reader options.
SPARK_FORMATS: dict[str, tuple[str, ...]] = {
    "parquet": (),
    "csv": ("header", "delim"),
    "json": (),
}
_OPTION_NAMES = {"delim": "sep"}
_TAGS = itertools.count(1)
_BACKTICK = re.compile(r"`(?:[^`]|``)*`")


@dataclass(frozen=True)
class SparkSettings:
    """Where Spark runs: a ``master`` URL (``local[2]``, ``spark://…``) or a Spark
    Connect ``remote`` (``sc://host:port``)."""

    master: str | None = "local[2]"
    remote: str | None = None
    app_name: str = "stockade"
    shuffle_partitions: int = 4


def spark_session(settings: SparkSettings) -> Any:
    """The Spark session of ``settings`` (one per process and master)."""
    from pyspark.sql import SparkSession

    # Spark's Python workers run this interpreter (the one with Stockade's packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(settings.app_name)
    if settings.remote:
        builder = builder.remote(settings.remote)
    else:
        builder = builder.master(settings.master or "local[2]")
        builder = builder.config("spark.ui.enabled", "false")
        builder = builder.config("spark.ui.showConsoleProgress", "false")
        builder = builder.config("spark.sql.shuffle.partitions",
                                 str(settings.shuffle_partitions))
    builder = builder.config("spark.sql.session.timeZone", "UTC")
    return builder.getOrCreate()


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_spark(sql: str, databases: Mapping[str, str] | None = None) -> str:
    """DuckDB SQL (what the policy pipeline produces) as Spark SQL; ``databases``
    renames the schemas of qualified tables (dataset → the engine's Spark database).

    >>> to_spark('SELECT "a", COUNT(*) AS n FROM "d"."t" GROUP BY "a"')
    'SELECT `a`, COUNT(*) AS n FROM `d`.`t` GROUP BY `a`'
    >>> to_spark('SELECT * FROM "d"."t"', {"d": "d__e1"})
    'SELECT * FROM `d__e1`.`t`'
    >>> to_spark('WITH r AS MATERIALIZED (SELECT 1 AS u) SELECT u FROM r')
    'WITH r AS (SELECT 1 AS u) SELECT u FROM r'
    """
    try:
        trees = sqlglot.parse(sql, read="duckdb")
        for tree in trees:  # DuckDB's MATERIALIZED hint has no Spark spelling
            for cte in tree.find_all(exp.CTE) if tree is not None else ():
                cte.set("materialized", None)
        if databases:
            for tree in trees:
                for table in tree.find_all(exp.Table) if tree is not None else ():
                    renamed = databases.get(table.db.lower()) if table.db else None
                    if renamed is not None:
                        table.set("db", exp.to_identifier(renamed, quoted=True))
        return ";\n".join(t.sql(dialect="spark") for t in trees if t is not None)
    except sqlglot.errors.SqlglotError as exc:
        raise QueryFailedError(f"This query cannot be run on Spark: {exc}") from None


def duckdb_types(schema: pa.Schema) -> dict[str, str]:
    """Column name → DuckDB type name of an Arrow schema (what the policy reads)."""
    empty = schema.empty_table()  # noqa: F841 - read by DuckDB's replacement scan
    con = duckdb.connect()
    try:
        rows = con.execute("DESCRIBE SELECT * FROM empty").fetchall()
    finally:
        con.close()
    return {row[0]: row[1] for row in rows}


def spark_error(exc: BaseException, *, timeout_s: float | None = None,
                cancelled: bool = False) -> Exception:
    """The Stockade error for an exception raised by Spark (values and SQL removed)."""
    if cancelled:
        return QueryTimeoutError(
            f"Query stopped after {timeout_s:g} s, the time limit for your role. "
            "Add filters or a LIMIT, or ask the data owner for a longer limit."
            if timeout_s else "Query was cancelled.")
    from pyspark.errors import PySparkException

    if not isinstance(exc, PySparkException):
        raise exc
    from pyspark.errors import AnalysisException, ParseException

    detail = str(exc)
    if not isinstance(exc, AnalysisException | ParseException):  # raised while reading rows
        return QueryFailedError("Spark: " + RUNTIME_ERROR.format(kind=type(exc).__name__),
                                detail=detail)
    text = detail.split("\n", 1)[0]
    text = _BACKTICK.sub(lambda m: m.group(0) if len(m.group(0)) < 80 else "`…`", text)
    # About the SQL text (before any row is read): the first line, without literals.
    return QueryFailedError("Spark: " + scrub_message(text, values=True), detail=detail)


class _Cursor:
    """The little of a DuckDB cursor the gateway's own statements use."""

    def __init__(self, engine: SparkEngine) -> None:
        self._engine = engine
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str) -> _Cursor:
        head, _, rest = sql.lstrip().partition(" ")
        if head.upper() == "DESCRIBE":  # as DuckDB: name, DuckDB type (the policy checks)
            types = duckdb_types(self._engine.result_schema(rest))
            self._rows = [(name, kind, "YES", None, None, None) for name, kind in types.items()]
            return self
        table = self._engine.execute(sql).read_all()
        columns = [c.to_pylist() for c in table.columns]
        self._rows = list(zip(*columns, strict=True))
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def close(self) -> None:
        self._rows = []


class SparkEngine(Retiring):
    """The tables of one domain registered in Spark, read through the policy pipeline."""

    def __init__(self, work_dir: Path, settings: SparkSettings | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.settings = settings or SparkSettings()
        self._plans: dict[tuple[str, str], SourcePlan] = {}
        self._sources: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._spark: Any = None
        self._init_retiring()
        self._columns: dict[tuple[str, str], dict[str, str]] = {}
        # Each engine has Spark databases of its own: engines of a replaced and a
        # replacing policy (or two domains of one process) share the Spark session.
        self._tag = uuid.uuid4().hex[:12]
        self._databases: dict[str, str] = {}

    # -- building -------------------------------------------------------------------

    def add_table(self, dataset: str, table: str, plan: SourcePlan,
                  source: Mapping[str, Any]) -> None:
        """Register ``source`` (a policy ``source:`` mapping, paths resolved) as
        ``dataset.table``; ``plan`` is its connector's plan (for Arrow copies)."""
        if self._spark is not None:
            raise RuntimeError("tables are added before the engine starts")
        fmt = str(source.get("format"))
        if plan.arrow is None and fmt not in SPARK_FORMATS:
            raise ConfigError(
                f"Table '{dataset}.{table}': the Spark engine reads sources of format "
                f"{', '.join(sorted(SPARK_FORMATS))}, arrow and memory, not '{fmt}'")
        self._plans[(dataset, table)] = plan
        self._databases[dataset.lower()] = f"stockade_{dataset.lower()}_{self._tag}"
        self._sources[(dataset, table)] = dict(source)

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spark = spark_session(self.settings)
        warehouse = self.work_dir / "spark-warehouse"
        for ds in sorted({ds for ds, _ in self._plans}):
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {_quote(self._database(ds))} "
                      f"LOCATION {_literal(str(warehouse / ds))}")
        for (ds, table), plan in self._plans.items():
            name = f"{_quote(self._database(ds))}.{_quote(table)}"
            spark.sql(f"DROP TABLE IF EXISTS {name}")
            try:
                if plan.arrow is not None:
                    spark.createDataFrame(plan.arrow).write.saveAsTable(name)
                else:
                    spark.sql(self._create(name, self._sources[(ds, table)]))
                spark.sql(f"SELECT * FROM {name} LIMIT 0").collect()
            except Exception as exc:
                raise ConnectorError(
                    f"Cannot read the source of table '{ds}.{table}' on Spark "
                    f"({plan.description}): {str(exc).splitlines()[0]}") from None
        spark.conf.set("spark.sql.runSQLOnFiles", "false")
        self._spark = spark
        for key in self._plans:
            self._columns[key] = duckdb_types(self.arrow_schema(*key))

    def _database(self, dataset: str) -> str:
        return self._databases[dataset.lower()]

    @staticmethod
    def _create(name: str, source: Mapping[str, Any]) -> str:
        fmt = str(source["format"])
        path, _ = resolve_path(source, Path("/"))
        options = {"path": path}
        if fmt == "csv":
            options["header"] = "true" if source.get("header", True) else "false"
            options["inferSchema"] = "true"
        if fmt == "json":
            options["multiLine"] = "false"
        for key in SPARK_FORMATS[fmt]:
            if key in source and key != "header":
                options[_OPTION_NAMES.get(key, key)] = str(source[key])
        opts = ", ".join(f"{_quote(k)} {_literal(v)}" for k, v in options.items())
        return f"CREATE TABLE {name} USING {fmt} OPTIONS ({opts})"

    def close(self) -> None:
        with self._lock:
            spark, self._spark = self._spark, None
        if spark is not None:
            for database in sorted(set(self._databases.values())):
                try:
                    spark.sql(f"DROP DATABASE IF EXISTS {_quote(database)} CASCADE")
                except Exception:  # pragma: no cover - the session already stopped
                    pass

    # -- retiring (as gateway.engine.Engine) ----------------------------------------

    @property
    def closed(self) -> bool:
        return self._spark is None


    # -- reading --------------------------------------------------------------------

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def tables(self) -> Sequence[tuple[str, str]]:
        return list(self._plans)

    @contextmanager
    def bounded_source(self, dataset: str, table: str) -> Iterator[BoundedSource | None]:
        """Always ``None``: Spark keeps no bounded snapshot, ``dp`` queries sample."""
        yield None

    def columns(self, dataset: str, table: str) -> dict[str, str]:
        """Column name → DuckDB type name (as the DuckDB engine reports them)."""
        return dict(self._columns[(dataset, table)])

    def arrow_schema(self, dataset: str, table: str) -> pa.Schema:
        return self.result_schema(f'SELECT * FROM "{dataset}"."{table}"')

    def result_schema(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> pa.Schema:
        """The Arrow schema of ``sql``'s result (Spark plans it, nothing is read)."""
        if parameters:
            raise QueryFailedError("Parameters are not supported on the Spark engine")
        with self.in_use():
            try:
                frame = self._spark.sql(to_spark(sql, self._databases))
                schema: pa.Schema = frame.limit(0).toArrow().schema
                return schema
            except QueryFailedError:
                raise
            except Exception as exc:
                raise spark_error(exc) from None

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        batch_rows: int = 65_536,
        prefetch: int = 2,
    ) -> pa.RecordBatchReader:
        """Run ``sql`` on Spark; the result is collected on the driver as Arrow.

        The timeout cancels the query's Spark jobs (by tag).
        """
        if parameters:
            raise QueryFailedError("Parameters are not supported on the Spark engine")
        spark_sql = to_spark(sql, self._databases)
        with self.in_use():
            spark = self._spark
            tag = f"stockade-{next(_TAGS)}"
            cancelled = threading.Event()

            def cancel() -> None:
                cancelled.set()
                spark.interruptTag(tag)

            timer = threading.Timer(timeout_s, cancel) if timeout_s else None
            spark.addTag(tag)
            try:
                if timer is not None:
                    timer.daemon = True
                    timer.start()
                table = spark.sql(spark_sql).toArrow()
            except Exception as exc:
                raise spark_error(exc, timeout_s=timeout_s,
                                  cancelled=cancelled.is_set()) from None
            finally:
                if timer is not None:
                    timer.cancel()
                spark.removeTag(tag)
        batches = table.to_batches(max_chunksize=batch_rows)
        return pa.RecordBatchReader.from_batches(table.schema, iter(batches))
