"""The dataframe API: lazy Ibis expressions over a gateway's tables, run as SQL.

``conn.table("oncology.screenings")`` builds an unbound Ibis table from the
table's schema as your role sees it (hidden columns absent) and wraps it in a
:class:`Table`. Every Ibis table method works on it (``filter``, ``select``,
``mutate``, ``group_by``/``agg``, ``join``, ``order_by``, ``limit``, …) and
returns a :class:`Table` again; columns (``t.age``) are plain Ibis columns.
Nothing runs until ``to_polars()``, ``to_arrow()`` or ``to_pandas()``: the
expression is compiled by Ibis to DuckDB SQL, flattened into one SELECT where
possible (:mod:`stockade.flatten`) and sent through the gateway as any SQL is,
so the same policy applies — row filters, hidden columns, ``aggregate`` and
``dp`` modes, budgets. ``sql()`` shows the SQL that is sent.

Tables of one connection combine (joins, unions); tables of two connections
cannot: each gateway answers only over its own tables.

The tables are bound to the connection as their Ibis backend (:class:`Source`),
so Ibis expressions that leave the wrapper — a column's ``value_counts()``, a
scalar such as ``t.age.mean()`` — run through the gateway too with Ibis's own
``to_polars()``, ``to_pyarrow()`` and ``execute()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.operations as ops
import ibis.expr.schema as ibis_schema
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import sqlglot
from ibis.backends.sql.datatypes import DuckDBType
from ibis.expr.types.groupby import GroupedTable

from gateway.errors import InputError
from stockade.dataframe import DataFrame, as_pandas, as_polars
from stockade.flatten import DIALECT, flatten

if TYPE_CHECKING:
    from stockade.client import Connection


class Table:
    """A lazy dataframe expression over the tables of one connection.

    ``expr`` is the Ibis expression; attribute access and method calls go to it.
    """

    __slots__ = ("_expr", "_conn")
    _expr: Any
    _conn: Connection

    def __init__(self, expr: Any, connection: Connection) -> None:
        object.__setattr__(self, "_expr", expr)
        object.__setattr__(self, "_conn", connection)

    @classmethod
    def over(cls, connection: Connection, name: str) -> Table:
        """The table ``name`` of ``connection``, with the columns its schema shows."""
        from stockade.client import _split

        catalog, dataset, table = _split(name)
        schema = ibis_schema.Schema.from_pyarrow(connection.schema(name))
        node = ops.DatabaseTable(name=table, schema=schema, source=connection.ibis_source,
                                 namespace=ops.Namespace(catalog=catalog, database=dataset))
        return cls(node.to_expr(), connection)

    @property
    def expr(self) -> Any:
        """The Ibis expression."""
        return self._expr

    @property
    def connection(self) -> Connection:
        return self._conn

    # -- running ----------------------------------------------------------------------

    def sql(self) -> str:
        """The SQL (DuckDB dialect) that ``to_polars()`` sends to the gateway."""
        return compile_sql(self._expr)

    def to_arrow(self, *, epsilon: float | None = None) -> pa.Table:
        """Run the expression through the gateway; the answer as a pyarrow Table."""
        return run(self._conn, self._expr, epsilon=epsilon)

    def to_polars(self, *, epsilon: float | None = None) -> DataFrame:
        """Run the expression through the gateway; a polars DataFrame with ``.privacy``."""
        return as_polars(self.to_arrow(epsilon=epsilon))

    def to_pandas(self, *, epsilon: float | None = None) -> pd.DataFrame:
        """Run the expression through the gateway; a pandas DataFrame
        (privacy in ``attrs["privacy"]``)."""
        return as_pandas(self.to_arrow(epsilon=epsilon))

    # -- delegation to Ibis -----------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name in Table.__slots__ or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)  # not an Ibis attribute (copy, pickle, …)
        value = getattr(self._expr, name)
        if inspect.ismethod(value):
            return self._method(value)
        return self._wrap(value)

    def __getitem__(self, key: Any) -> Any:
        return self._wrap(self._expr[self._unwrap(key)])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Tables are immutable: use mutate() to add columns")

    def __copy__(self) -> Table:
        return self  # immutable, like the Ibis expression it holds

    def __deepcopy__(self, memo: dict[int, Any]) -> Table:
        return self

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | set(dir(self._expr)))

    def __repr__(self) -> str:
        return f"<stockade.Table on {self._conn.url}>\n{self._expr!r}"

    def _method(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(self._unwrap(a) for a in args)
            kwargs = {k: self._unwrap(v) for k, v in kwargs.items()}
            return self._wrap(method(*args, **kwargs))

        call.__name__ = getattr(method, "__name__", "method")
        call.__doc__ = method.__doc__
        return call

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, ir.Table | GroupedTable | ir.Scalar) and not isinstance(
                value, ir.Column):
            return Table(value, self._conn)
        return value

    def _relation(self) -> Any:
        if isinstance(self._expr, GroupedTable):
            return self._expr.table
        if isinstance(self._expr, ir.Table):
            return self._expr.op()
        return None

    def _unwrap(self, value: Any) -> Any:
        if isinstance(value, Table):
            if value._conn is not self._conn:
                raise InputError(
                    f"Tables of two connections cannot be combined ({self._conn.url} and "
                    f"{value._conn.url}): each gateway answers only over its own tables. "
                    "Run each query on its own connection and combine the answers in polars.")
            value = value._expr
        if isinstance(value, list | tuple):
            return type(value)(self._unwrap(v) for v in value)
        if isinstance(value, dict):
            return {k: self._unwrap(v) for k, v in value.items()}
        if isinstance(value, ir.Value):
            return _retarget_counts(value, self._relation())
        return value


def _retarget_counts(value: Any, relation: Any) -> Any:
    """``value`` with ``t.count()`` of an ancestor ``t`` of ``relation`` counting ``relation``.

    ``t.filter(…).group_by(…).agg(n=t.count())`` means the rows of the filtered
    table, as ``t.age.mean()`` there means the filtered ages (Ibis rebinds
    columns to the filtered table, but not a count of ``t`` itself).
    """
    if relation is None:
        return value
    ancestors = set(relation.find(ops.Relation))
    swaps = {c: ops.CountStar(relation) for c in value.op().find(ops.CountStar)
             if c.arg != relation and c.arg in ancestors and c.where is None}
    if not swaps:
        return value
    return value.op().replace(swaps).to_expr()


class Source:
    """The Ibis backend of a connection's tables: runs expressions through the gateway.

    Only what Ibis asks of a backend to run an expression is here; tables come
    from :meth:`stockade.Connection.table`.
    """

    name = "stockade"

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def compiler(self) -> Any:  # what ibis.to_sql(expr) compiles with
        from ibis.backends.sql.compilers import duckdb as duckdb_compiler

        return duckdb_compiler.compiler

    def _run(self, expr: Any, params: Any, limit: Any) -> pa.Table:
        if params:
            raise InputError("Query parameters are not supported: write the values into "
                             "the expression.")
        if isinstance(limit, int) and isinstance(expr, ir.Table):
            expr = expr.limit(limit)
        return run(self.connection, expr)

    def to_pyarrow(self, expr: Any, *, params: Any = None, limit: Any = None,
                   **kwargs: Any) -> Any:
        table = self._run(expr, params, limit)
        if isinstance(expr, ir.Table):
            return table
        column = table.column(0)
        return column[0] if isinstance(expr, ir.Scalar) else column

    def to_polars(self, expr: Any, *, params: Any = None, limit: Any = None,
                  **kwargs: Any) -> Any:
        frame = as_polars(self._run(expr, params, limit))
        if isinstance(expr, ir.Table):
            return frame
        return frame.item() if isinstance(expr, ir.Scalar) else frame.to_series(0)

    def execute(self, expr: Any, *, params: Any = None, limit: Any = "default",
                **kwargs: Any) -> Any:
        frame = as_pandas(self._run(expr, params, limit))
        if isinstance(expr, ir.Table):
            return frame
        return frame.iat[0, 0] if isinstance(expr, ir.Scalar) else frame.iloc[:, 0]

    def __repr__(self) -> str:
        return f"<stockade tables of {self.connection!r}>"


def run(connection: Connection, expr: Any, *, epsilon: float | None = None) -> pa.Table:
    """Compile ``expr`` and run it through ``connection``; the answer as a pyarrow Table."""
    table = connection.arrow(compile_sql(expr), epsilon=epsilon)
    return _restore_names(table, _names(expr))


def _names(expr: Any) -> list[str]:
    if isinstance(expr, ir.Table):
        return list(expr.schema().names)
    return [expr.get_name()]


def _restore_names(table: pa.Table, names: list[str]) -> pa.Table:
    """``table`` with the expression's column names where only their case was lost.

    The gateway may answer ``"MeanAge"`` as ``meanage``; the expression's names
    are the ones its author wrote. Columns the gateway adds after them (a network's
    ``domain_count``) keep their names.
    """
    have = table.column_names
    if have[: len(names)] == names or [n.lower() for n in have[: len(names)]] != [
            n.lower() for n in names]:
        return table
    fields = [f.with_name(names[i]) if i < len(names) else f
              for i, f in enumerate(table.schema)]
    return pa.Table.from_arrays(table.columns,
                                schema=pa.schema(fields, metadata=table.schema.metadata))


def _schema_of(expr: Any) -> dict[str, Any] | None:
    """The tables ``expr`` reads, nested as sqlglot wants; None when they mix depths."""
    tables = expr.op().find((ops.UnboundTable, ops.DatabaseTable))
    nested: dict[str, Any] = {}
    depths = set()
    for t in tables:
        columns = {n: DuckDBType.from_ibis(d).sql(DIALECT) for n, d in t.schema.items()}
        path = [p for p in (t.namespace.catalog, t.namespace.database) if p]
        depths.add(len(path))
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[t.name] = columns
    return nested if len(depths) == 1 else None


def compile_sql(expr: Any) -> str:
    """The DuckDB SQL of an Ibis expression, flattened into one SELECT where possible."""
    if isinstance(expr, GroupedTable):
        raise InputError("A grouped table is not a query yet: aggregate it with "
                         ".agg(name=…), e.g. t.group_by('site').agg(n=t.count()).")
    raw = str(ibis.to_sql(expr, dialect=DIALECT))
    schema = _schema_of(expr)
    if schema is None:
        return raw
    try:
        return flatten(raw, schema, _names(expr))
    except sqlglot.errors.SqlglotError:
        return raw
