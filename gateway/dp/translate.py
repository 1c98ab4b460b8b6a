"""Check that a query fits ``dp`` mode and split it for SmartNoise.

``dp`` mode answers one ``SELECT`` over one table with aggregates only:

- ``COUNT(*)``, ``COUNT(col)``, ``SUM(col)``, ``AVG(col)``, ``VARIANCE(col)`` /
  ``VAR_POP`` / ``VAR_SAMP``, ``STDDEV(col)`` / ``STDDEV_POP`` /
  ``STDDEV_SAMP`` (both variance forms are SmartNoise's noisy population
  formula), and arithmetic over them (``SUM(x) / 100``);
- ``GROUP BY`` columns or expressions (rare groups are censored);
- ``WHERE`` with any allowed function (applied to rows before aggregation);
- ``HAVING``, ``ORDER BY`` and ``LIMIT``, applied to the noisy result.

Everything else is refused with a message saying what to write instead.

The query is split in two (:class:`DpQuery`):

- the **relation**: the table under the policy (row filters, masks, hidden
  columns: :func:`policy.rules.apply_table_policy.policy_subquery`) with the
  analyst's ``WHERE`` applied, projecting the raw privacy unit as ``u``, each
  aggregated column as ``v0, v1, …`` and each grouping expression as ``k0, …``;
- the **SmartNoise query**: the aggregates over the table ``dp.rel``, with
  outputs named ``c0, c1, …``. The reader substitutes the relation for
  ``dp.rel`` (:mod:`gateway.dp.reader`).

Only safe generated names reach SmartNoise, so DuckDB identifiers of any case
or spelling work.

When the engine keeps a bounded snapshot of the table (at most
``max_rows_per_unit`` rows per unit, :mod:`gateway.snapshots`), the relation
reads it instead of the table (:func:`over_snapshot`); everything else stays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from gateway.errors import InputError, SqlError, StockadeError
from policy.access import TableAccess, visible_columns
from policy.locate import location
from policy.principal import Principal
from policy.rules.apply_table_policy import policy_subquery
from policy.schema import Catalog, Schemas, access_for, columns_for

#: The name SmartNoise sees for the relation.
RELATION = "dp.rel"
#: The column of the relation that holds the privacy unit.
UNIT = "u"
_RAW_UNIT = "__stockade_unit"
_ALIAS = "__r"

_AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Count: "COUNT",
    exp.Sum: "SUM",
    exp.Avg: "AVG",
    exp.Variance: "VAR",
    exp.VariancePop: "VAR",
    exp.Stddev: "STDDEV",
    exp.StddevPop: "STDDEV",
    exp.StddevSamp: "STDDEV",
}
_WRITE = "write COUNT(*), COUNT(col), SUM(col), AVG(col), VARIANCE(col) or STDDEV(col)"


class DpQueryError(SqlError):
    """A query that ``dp`` mode cannot answer; the message says what to write."""


class SmartNoiseSql(Postgres):
    """PostgreSQL as SmartNoise's parser reads it: its CAST takes only FLOAT, INTEGER,
    VARCHAR, BOOLEAN, DATE, TIME and TIMESTAMP (``CAST(x AS DOUBLE)`` or ``x::int`` from
    the analyst become FLOAT and INTEGER)."""

    class Generator(Postgres.Generator):  # type: ignore[valid-type,misc]
        TYPE_MAPPING = {
            **Postgres.Generator.TYPE_MAPPING,
            **{t: "FLOAT" for t in exp.DataType.REAL_TYPES},
            **{t: "INTEGER" for t in exp.DataType.INTEGER_TYPES},
            **{t: "VARCHAR" for t in exp.DataType.TEXT_TYPES},
        }


def _refuse(message: str, node: exp.Expr | None = None) -> DpQueryError:
    line, col = location(node) if node is not None else (None, None)
    return DpQueryError(message, line=line, col=col)


@dataclass(frozen=True)
class OutputColumn:
    """One column of the answer: its name and whether it carries noise."""

    name: str
    noisy: bool


@dataclass(frozen=True)
class DpQuery:
    """A ``dp`` query split into the relation and the SmartNoise query."""

    access: TableAccess
    relation_sql: str  # DuckDB SQL of the policy relation (u, v*, k*)
    smartnoise_sql: str  # over ``dp.rel``; outputs c0, c1, ...
    outputs: tuple[OutputColumn, ...]
    bounds: tuple[tuple[str, float | None, float | None], ...]  # (v column, lower, upper)
    grouped: bool
    normalized: str  # the analyst's query, normalised (for the result cache)


def _strip_alias(node: exp.Expr) -> tuple[str, exp.Expr]:
    if isinstance(node, exp.Alias):
        return node.alias, node.this
    if isinstance(node, exp.Column):
        return node.name, node
    return node.sql(dialect="duckdb"), node


def _check_shape(expression: exp.Expr) -> exp.Select:
    if not isinstance(expression, exp.Select):
        raise _refuse(
            "dp mode answers a single SELECT; run each part of a UNION/INTERSECT/EXCEPT "
            "as its own query"
        )
    if expression.args.get("with_") or expression.find(exp.CTE):
        raise _refuse("dp mode does not support WITH (CTEs); put the condition in the WHERE "
                      "clause of one SELECT over the table")
    if expression.args.get("joins"):
        raise _refuse("dp mode does not support joins; query one table at a time and combine "
                      "the noisy aggregates yourself", expression.args["joins"][0])
    for node in expression.find_all(exp.Subquery, exp.Select):
        if node is not expression:
            raise _refuse("dp mode does not support subqueries; write one SELECT with "
                          "aggregates over the table", node)
    if expression.find(exp.Window):
        raise _refuse("dp mode does not support window functions; " + _WRITE + " with GROUP BY",
                      expression.find(exp.Window))
    if expression.args.get("distinct"):
        raise _refuse("dp mode does not support SELECT DISTINCT (it releases rare values); "
                      "use GROUP BY with COUNT(*) instead, rare groups are censored")
    for key in ("qualify", "offset", "prewhere", "sample", "laterals", "pivots"):
        if expression.args.get(key):
            raise _refuse(f"dp mode does not support {key.upper()}; " + _WRITE + " with "
                          "WHERE, GROUP BY, HAVING, ORDER BY and LIMIT")
    placeholder = expression.find(exp.Placeholder, exp.Parameter)
    if placeholder is not None:
        raise _refuse("dp mode does not take query parameters yet; write the values into the "
                      "query", placeholder)
    source = expression.args.get("from_")
    tables = list(expression.find_all(exp.Table))
    if source is None or len(tables) != 1 or not tables[0].db:
        raise _refuse("dp mode answers aggregates over one table; name one table in FROM")
    return expression


class _Translator:
    """Turns the analyst's aggregate expressions into SmartNoise SQL text."""

    def __init__(self, access: TableAccess, visible: dict[str, str]) -> None:
        self.access = access
        self.visible = {c.lower(): (c, t) for c, t in visible.items()}
        self.values: dict[str, str] = {}  # visible column -> v name
        self.keys: list[tuple[exp.Expr, str]] = []  # grouping expression -> k/v name

    def value(self, column: exp.Column) -> str:
        name, _ = self.visible[column.name.lower()]
        if name not in self.values:
            self.values[name] = f"v{len(self.values)}"
        return self.values[name]

    def key_for(self, node: exp.Expr) -> str | None:
        for key, name in self.keys:
            if key == node:
                return name
        return None

    def add_key(self, node: exp.Expr) -> str:
        found = self.key_for(node)
        if found is not None:
            return found
        if isinstance(node, exp.Column):
            name = self.value(node)
        else:
            if node.find(exp.AggFunc):
                raise _refuse("GROUP BY an aggregate is not possible", node)
            name = f"k{len(self.keys)}"
        self.keys.append((node.copy(), name))
        return name

    def aggregate(self, node: exp.Expr) -> exp.Expr:
        kind = next((n for t, n in _AGGREGATES.items() if type(node) is t), None)
        if kind is None:
            name = node.sql_name() if isinstance(node, exp.Func) else type(node).__name__
            if isinstance(node, exp.Min | exp.Max):
                raise _refuse(
                    f"{name} is not available in dp mode (a minimum or maximum can reveal one "
                    "person's value); use AVG, or COUNT(*) with a WHERE range such as "
                    "WHERE x >= 100", node)
            raise _refuse(f"Aggregate {name} is not available in dp mode; {_WRITE}", node)
        argument = node.this
        if isinstance(argument, exp.Distinct):
            raise _refuse(f"{kind}(DISTINCT ...) is not available in dp mode; "
                          f"use {kind} without DISTINCT", node)
        if kind == "COUNT" and isinstance(argument, exp.Star):
            return exp.Anonymous(this="COUNT", expressions=[exp.Star()])
        if not isinstance(argument, exp.Column):
            raise _refuse(f"{kind} takes one column in dp mode, e.g. {kind}(x); compute "
                          "expressions of the result instead (SUM(x) * 2, not SUM(x * 2))",
                          node)
        return exp.Anonymous(this=kind, expressions=[exp.column(self.value(argument))])

    def noisy(self, node: exp.Expr, what: str) -> exp.Expr:
        """An expression over aggregates (and grouping keys), for SmartNoise."""
        node = node.copy()
        if not node.find(exp.AggFunc) and self.key_for(node) is None:
            column = node if isinstance(node, exp.Column) else node.find(exp.Column)
            name = column.name if column is not None else node.sql(dialect="duckdb")
            raise _refuse(
                f"{what} '{name}' is neither an aggregate nor in GROUP BY; dp mode returns "
                f"aggregates only: {_WRITE}, grouped by columns", node)

        def swap(child: exp.Expr) -> exp.Expr:
            key = self.key_for(child)
            if key is not None:
                return exp.column(key)
            if isinstance(child, exp.AggFunc):
                if any(isinstance(a, exp.AggFunc) for a in child.find_all(exp.AggFunc)
                       if a is not child):
                    raise _refuse("Nested aggregates are not supported", child)
                return self.aggregate(child)
            if isinstance(child, exp.Column):
                raise _refuse(
                    f"Column '{child.name}' is used outside an aggregate; in dp mode "
                    f"{_WRITE}, or add it to GROUP BY", child)
            return child

        return node.transform(swap)


def translate(
    expression: exp.Expr,
    *,
    principal: Principal,
    catalog: Catalog,
    schemas: Schemas,
) -> DpQuery:
    """Check a qualified query against ``dp`` mode and split it (see the module doc)."""
    select = _check_shape(expression)
    table = next(select.find_all(exp.Table))
    access = access_for(catalog, table)
    if access.mode != "dp":
        raise InputError(
            f"Table '{access.qualified_name}' is in '{access.mode}' mode for your role, "
            "not 'dp'"
        )
    source = list(columns_for(schemas, access))
    visible = dict(visible_columns(access, columns_for(schemas, access)))
    tr = _Translator(access, visible)

    group = select.args.get("group")
    for node in group.expressions if group else []:
        tr.add_key(node)

    outputs: list[OutputColumn] = []
    items: list[str] = []
    for i, projection in enumerate(select.expressions):
        name, body = _strip_alias(projection)
        if isinstance(body, exp.Star):
            raise _refuse("dp mode returns aggregates only; " + _WRITE, body)
        key = tr.key_for(body)
        if key is not None:
            outputs.append(OutputColumn(name, noisy=False))
            items.append(f"{key} AS c{i}")
        else:
            translated = tr.noisy(body, "Column")
            outputs.append(OutputColumn(name, noisy=True))
            items.append(f"{translated.sql(dialect=SmartNoiseSql)} AS c{i}")
    by_name = {o.name: f"c{i}" for i, o in enumerate(outputs)}

    def post(node: exp.Expr, what: str) -> str:
        def to_output(child: exp.Expr) -> exp.Expr:
            if isinstance(child, exp.Column) and not child.table and child.name in by_name:
                return exp.column(by_name[child.name])
            return child

        node = node.copy().transform(to_output)
        if all(c.name in by_name.values() for c in node.find_all(exp.Column)) \
                and not node.find(exp.AggFunc):
            return node.sql(dialect=SmartNoiseSql)
        return tr.noisy(node, what).sql(dialect=SmartNoiseSql)

    sql = f"SELECT {', '.join(items)} FROM {RELATION}"
    if group:
        sql += " GROUP BY " + ", ".join(name for _, name in tr.keys)
    having = select.args.get("having")
    if having is not None:
        sql += " HAVING " + post(having.this, "HAVING column")
    order = select.args.get("order")
    if order is not None:
        parts = []
        for ordered in order.expressions:
            parts.append(post(ordered.this, "ORDER BY column")
                         + (" DESC" if ordered.args.get("desc") else ""))
        sql += " ORDER BY " + ", ".join(parts)
    limit = select.args.get("limit")
    if limit is not None:
        count = limit.expression
        if not (isinstance(count, exp.Literal) and count.is_int):
            raise _refuse("LIMIT takes a number in dp mode", limit)
        sql += f" LIMIT {int(count.name)}"

    relation = _relation(select, access, source, list(visible), principal, tr)
    bounds = tuple(
        (v, access.columns[c].lower if c in access.columns else None,
         access.columns[c].upper if c in access.columns else None)
        for c, v in tr.values.items()
    )
    return DpQuery(
        access=access,
        relation_sql=relation,
        smartnoise_sql=sql,
        outputs=tuple(outputs),
        bounds=bounds,
        grouped=group is not None,
        normalized=select.sql(dialect="duckdb", identify=True, normalize=True),
    )


def _relation(
    select: exp.Select,
    access: TableAccess,
    source: list[str],
    visible: list[str],
    principal: Principal,
    tr: _Translator,
) -> str:
    inner = policy_subquery(access, source, visible, principal)
    if access.privacy_unit:
        unit = {c.lower(): c for c in source}.get(access.privacy_unit.lower())
        if unit is None:
            raise InputError(
                f"The privacy unit '{access.privacy_unit}' of table '{access.qualified_name}' "
                "is not a column of its source; the data owner must fix the policy"
            )
        inner = inner.select(
            exp.alias_(exp.column(unit, table=access.table, quoted=True), _RAW_UNIT, quoted=True),
            append=True, copy=False,
        )

    def requalify(node: exp.Expr) -> exp.Expr:
        node = node.copy()
        for column in node.find_all(exp.Column):
            column.set("table", exp.to_identifier(_ALIAS, quoted=True))
        return node

    projections: list[exp.Expr] = []
    if access.privacy_unit:
        projections.append(exp.alias_(exp.column(_RAW_UNIT, table=_ALIAS, quoted=True), UNIT))
    for column, name in tr.values.items():
        projections.append(exp.alias_(exp.column(column, table=_ALIAS, quoted=True), name))
    for node, name in tr.keys:
        if not isinstance(node, exp.Column):
            projections.append(exp.alias_(requalify(node), name))
    if not projections:
        projections.append(exp.alias_(exp.Literal.number(1), "one"))
    outer = exp.select(*projections).from_(
        exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(_ALIAS)))
    )
    where = select.args.get("where")
    if where is not None:
        outer = outer.where(requalify(where.this), copy=False)
    return outer.sql(dialect="duckdb", identify=True)


@functools.lru_cache(maxsize=1024)
def over_snapshot(relation_sql: str, dataset: str, table: str, snapshot: str) -> str:
    """``relation_sql`` reading the table reference ``snapshot`` instead of ``dataset.table``.

    Only the table the policy subquery reads is swapped (it keeps the table's name
    as its alias, so the policy's qualified columns still resolve); a relation of
    another shape is refused rather than read unbounded.

    >>> print(over_snapshot('SELECT "__r"."u" AS "u" FROM (SELECT "t"."x", "t"."p" AS '
    ...                     '"__stockade_unit" FROM "d"."t" WHERE ("t"."ok")) AS "__r"',
    ...                     "d", "t", '"__dp_bounded_1"."main"."bounded"'))
    ... # doctest: +NORMALIZE_WHITESPACE
    SELECT "__r"."u" AS "u" FROM (SELECT "t"."x", "t"."p" AS "__stockade_unit"
    FROM "__dp_bounded_1"."main"."bounded" AS "t" WHERE ("t"."ok")) AS "__r"
    """
    tree = sqlglot.parse_one(relation_sql, read="duckdb")
    outer = tree.args.get("from_")
    inner = outer.this if outer is not None else None
    source = None
    if isinstance(inner, exp.Subquery) and isinstance(inner.this, exp.Select):
        found = inner.this.args.get("from_")
        source = found.this if found is not None else None
    if not (isinstance(source, exp.Table) and source.name == table and source.db == dataset
            and not source.catalog and not source.alias):
        raise StockadeError("The dp relation does not read its table where expected; "
                            "cannot read the bounded snapshot")  # pragma: no cover
    reference = sqlglot.parse_one(f"SELECT * FROM {snapshot}", read="duckdb").args["from_"].this
    reference.set("alias", exp.TableAlias(this=exp.to_identifier(table, quoted=True)))
    source.replace(reference)
    return tree.sql(dialect="duckdb", identify=True)
