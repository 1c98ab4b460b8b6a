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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from gateway.errors import InputError, SqlError
from policy.access import TableAccess, visible_columns
from policy.locate import location
from policy.principal import Principal
from policy.rules.apply_table_policy import policy_subquery
from policy.schema import Catalog, Schemas, access_for, columns_for
from policy.totality import check_total, make_total

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
    #: (v column, source column) of each value column read as is (not masked).
    raw_values: tuple[tuple[str, str], ...] = ()


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

    relation = _relation(select, access, columns_for(schemas, access), list(visible),
                         principal, tr)
    bounds = tuple(
        (v, access.columns[c].lower if c in access.columns else None,
         access.columns[c].upper if c in access.columns else None)
        for c, v in tr.values.items()
    )
    masked = {m.lower() for m in access.masks}
    return DpQuery(
        access=access,
        relation_sql=relation,
        smartnoise_sql=sql,
        outputs=tuple(outputs),
        bounds=bounds,
        grouped=group is not None,
        normalized=select.sql(dialect="duckdb", identify=True, normalize=True),
        raw_values=tuple((v, c) for c, v in tr.values.items() if c.lower() not in masked),
    )


def _relation(
    select: exp.Select,
    access: TableAccess,
    source_types: Mapping[str, str],
    visible: list[str],
    principal: Principal,
    tr: _Translator,
) -> str:
    """The DuckDB SQL of the relation (see the module doc).

    Every expression in it that reads rows (the owner's masks and row filters,
    the analyst's ``WHERE`` and grouping expressions) is checked and made total
    (:mod:`policy.totality`): the query either is refused here, before any data
    is read, or cannot fail on one person's value.
    """
    source = list(source_types)
    inner = policy_subquery(access, source, visible, principal)
    _total_policy(inner, access, source_types)
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
    masked = {m.lower() for m in access.masks}
    # The types the analyst's expressions see: a masked column's is the mask's.
    types = {c.lower(): t for c, t in source_types.items() if c.lower() not in masked}

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
            check_total(node, types=types)
            projections.append(exp.alias_(requalify(make_total(node, types=types)), name))
    if not projections:
        projections.append(exp.alias_(exp.Literal.number(1), "one"))
    outer = exp.select(*projections).from_(
        exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(_ALIAS)))
    )
    where = select.args.get("where")
    if where is not None:
        check_total(where.this, types=types)
        condition = make_total(where.this, types=types, predicate=True)
        outer = outer.where(requalify(condition), copy=False)
    return outer.sql(dialect="duckdb", identify=True)


def _total_policy(inner: exp.Select, access: TableAccess,
                  source_types: Mapping[str, str]) -> None:
    """Make the owner's masks and row filters in ``inner`` total, in place."""
    types = {c.lower(): t for c, t in source_types.items()}
    for projection in inner.expressions:
        if isinstance(projection, exp.Alias) and not isinstance(projection.this, exp.Column):
            check_total(projection.this, types=types,
                        what=f"The mask of column '{projection.alias}' of table "
                             f"'{access.qualified_name}' (the data owner must fix the policy)")
            projection.set("this", make_total(projection.this, types=types))
    where = inner.args.get("where")
    if where is not None:
        check_total(where.this, types=types,
                    what=f"A row filter of table '{access.qualified_name}' (the data owner "
                         "must fix the policy)")
        where.set("this", make_total(where.this, types=types, predicate=True))
