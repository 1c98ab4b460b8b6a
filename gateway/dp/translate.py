"""Check that a query fits ``dp`` mode and compile it into noisy measurements.

``dp`` mode answers one ``SELECT`` over one table with aggregates only:

- ``COUNT(*)``, ``COUNT(col)``, ``SUM(col)``, ``AVG(col)``, ``VARIANCE(col)`` /
  ``VAR_POP`` / ``VAR_SAMP``, ``STDDEV(col)`` / ``STDDEV_POP`` /
  ``STDDEV_SAMP`` (both variance forms use the population formula), and any
  expression over them (``SUM(x) / 100``, ``ROUND(AVG(x), 1)``);
- ``GROUP BY`` columns or expressions (rare groups are censored, unless every
  grouping column has declared ``public_keys``);
- ``WHERE`` with any allowed function (applied to rows before aggregation);
- ``HAVING``, ``ORDER BY`` and ``LIMIT``, applied to the noisy result.

Everything else is refused with a message saying what to write instead.

A query compiles to a :class:`DpQuery`:

- the **relation**: the table under the policy (row filters, masks, hidden
  columns: :func:`policy.rules.apply_table_policy.policy_subquery`) with the
  analyst's ``WHERE`` applied, projecting the raw privacy unit as ``u``, each
  aggregated column as ``v0, v1, …`` and each grouping expression as ``k0, …``;
- the **measurements** (:class:`Measure`): the per-group counts and sums, over
  the rows bounded per privacy unit and clamped to the policy's bounds, that
  receive noise — every aggregate of the query is a function of them (``AVG(x)``
  is the noisy sum of ``x`` over its noisy count);
- the **release**: each output column, ``HAVING`` and ``ORDER BY`` as DuckDB
  expressions over the noisy measurements and the group keys, evaluated after
  the noise (post-processing: :mod:`gateway.dp.release`).

When the engine keeps a bounded snapshot of the table (at most
``max_rows_per_unit`` rows per unit, :mod:`gateway.snapshots`), the relation
reads it instead of the table (:func:`over_snapshot`); everything else stays.

>>> from policy.loader import parse_policy
>>> from policy.principal import Principal
>>> from policy.access import catalog_for
>>> from policy.rules.parse import parse
>>> from policy.rules.resolve_tables import resolve_tables
>>> policy = parse_policy('''
... version: 1
... domain: {name: d}
... datasets:
...   h:
...     tables:
...       v:
...         source: {format: parquet, path: v.parquet}
...         privacy_unit: pid
...         columns: {cost: {lower: 0, upper: 100}}
... roles:
...   a: {datasets: {h: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 1}}}}
... ''')
>>> who = Principal("ann", "a")
>>> schemas = {("h", "v"): {"pid": "BIGINT", "site": "VARCHAR", "cost": "DOUBLE"}}
>>> catalog = catalog_for(policy, who)
>>> tree = resolve_tables(parse("SELECT site, AVG(cost) AS c FROM h.v GROUP BY site"),
...                       catalog=catalog, policy=policy, principal=who)
>>> q = translate(tree, principal=who, catalog=catalog, schemas=schemas)
>>> [m.name for m in q.measures]
['m_keys', 'm_sum_v1', 'm_count_v1']
>>> q.outputs[1].sql
'TRY(CASE WHEN m_count_v1 > 0 THEN CAST(m_sum_v1 AS DOUBLE) / m_count_v1 END)'
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp

from gateway.errors import InputError, SqlError, StockadeError
from policy.access import TableAccess, visible_columns
from policy.locate import location
from policy.principal import Principal
from policy.rules.apply_table_policy import policy_subquery
from policy.schema import Catalog, Schemas, access_for, columns_for

#: The name shown for the relation in the aggregate SQL people read (explain, audit).
RELATION = "dp.rel"
#: The column of the relation that holds the privacy unit.
UNIT = "u"
#: The key count used to censor rare groups (a count of the bounded rows).
KEYCOUNT = "m_keys"
_RAW_UNIT = "__stockade_unit"
_ALIAS = "__r"
_GUARDED = "stockade_guarded"
_POSITIVE = "stockade_positive"  # the "noisy denominator > 0" test of a ratio
#: Marker of "at least 0" (a variance); dropped when parts are released unclamped.
NONNEG = "__stockade_nonneg"

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


def _refuse(message: str, node: exp.Expr | None = None) -> DpQueryError:
    line, col = location(node) if node is not None else (None, None)
    return DpQueryError(message, line=line, col=col)


@dataclass(frozen=True)
class Measure:
    """One noisy measurement per group: a count or a sum over the bounded rows.

    ``kind`` is ``keys`` (the key count that censors rare groups), ``count``
    (of rows, or of a column's non-NULL values), ``sum`` (of the clamped values
    of ``value``) or ``sumsq`` (of their squared distances to ``centre``: 0, or
    the midpoint of the column's bounds for the parts a network node merges).
    ``sensitivity`` is what one row can change it by; one privacy unit has at
    most ``max_rows_per_unit`` rows.

    Centring the sum of squares cuts its sensitivity from ``max(|lo|, |hi|)²`` to
    ``((hi − lo) / 2)²`` (a quarter for bounds ``[0, hi]``) and leaves the
    variance formula exact: ``Σ(x − c)²/n − (Σx/n − c)²`` is ``Σx²/n − (Σx/n)²``.
    A domain's own answers keep ``c = 0``: where the mean lies near the midpoint,
    the variance is nearly flat in the noisy sum, and the interval simulated at
    the noisy values (:mod:`gateway.dp.release`) then covers more than 95 %; the
    network's merged interval, over several domains' parts, does not suffer it
    (see ``docs/network.md``).
    """

    name: str
    kind: str
    value: str | None = None
    sensitivity: float = 1.0
    integer: bool = True  # released as a whole number
    centre: float = 0.0  # sumsq: the point the squares are taken around


@dataclass(frozen=True)
class OutputColumn:
    """One column of the answer: its name, whether it carries noise, and its release.

    ``sql`` is a DuckDB expression over the group keys and the noisy measurements;
    ``measures`` the measurements it reads; ``single`` is true when the column is
    exactly one measurement (its interval is then exact and the same for every row).
    """

    name: str
    noisy: bool
    sql: str = ""
    measures: tuple[str, ...] = ()
    single: bool = False
    unclamped_sql: str = ""
    #: The same release with nothing made non-negative and square roots extended to
    #: negative values (sign(x)·sqrt(|x|)): what a derived column's interval is
    #: simulated on (see :mod:`gateway.dp.release`).
    spread_sql: str = ""


@dataclass(frozen=True)
class DpQuery:
    """A ``dp`` query compiled into a relation, measurements and a release."""

    access: TableAccess
    relation_sql: str  # DuckDB SQL of the policy relation (u, v*, k*)
    aggregate_sql: str  # the measurements over ``dp.rel`` (as people read it)
    keys: tuple[str, ...]  # relation columns that are grouping keys, in GROUP BY order
    measures: tuple[Measure, ...]
    outputs: tuple[OutputColumn, ...]
    having: str | None
    order: tuple[tuple[str, bool], ...]  # (expression, descending)
    limit: int | None
    bounds: tuple[tuple[str, float | None, float | None], ...]  # (v column, lower, upper)
    grouped: bool
    normalized: str  # the analyst's query, normalised (for the result cache)
    #: The declared key values of every grouping column (the grid of groups released),
    #: or None when groups come from the data and rare ones are censored.
    public_keys: tuple[tuple[Any, ...], ...] | None = None
    public_key_types: tuple[str, ...] = ()  # DuckDB type of each grouping column
    #: Relation columns holding integer values (their sums are whole numbers).
    integer_values: frozenset[str] = field(default_factory=frozenset)

    @property
    def censored(self) -> bool:
        """Whether rare groups are censored by a noisy key count (needs δ > 0)."""
        return self.grouped and self.public_keys is None


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
    group = expression.args.get("group")
    if group is not None and (any(group.args.get(k) for k in ("rollup", "cube",
                                                               "grouping_sets"))
                              or group.find(exp.Rollup, exp.Cube, exp.GroupingSets)):
        raise _refuse("dp mode does not support ROLLUP, CUBE or GROUPING SETS; run one "
                      "GROUP BY per grouping you need", group)
    placeholder = expression.find(exp.Placeholder, exp.Parameter)
    if placeholder is not None:
        raise _refuse("dp mode does not take query parameters yet; write the values into the "
                      "query", placeholder)
    source = expression.args.get("from_")
    tables = list(expression.find_all(exp.Table))
    if source is None or len(tables) != 1 or not tables[0].db:
        raise _refuse("dp mode answers aggregates over one table; name one table in FROM")
    return expression


def _ratio(numerator: exp.Expr, denominator: exp.Expr) -> exp.Expr:
    """``numerator / denominator`` when the noisy denominator is positive, else NULL."""
    if isinstance(numerator, exp.Cast) and numerator.to.is_type("double"):
        numerator = numerator.this
    division = exp.Div(this=exp.Cast(this=numerator, to=exp.DataType.build("DOUBLE")),
                       expression=denominator.copy())
    division.meta[_GUARDED] = True
    positive = exp.GT(this=denominator.copy(), expression=exp.Literal.number(0))
    positive.meta[_POSITIVE] = True
    return exp.Case(ifs=[exp.If(this=positive, true=division)])


def _nonneg(node: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this=NONNEG, expressions=[node])


class _Translator:
    """Turns the analyst's aggregate expressions into expressions over measurements."""

    def __init__(self, access: TableAccess, visible: dict[str, str], *,
                 centred: bool = False) -> None:
        self.centred = centred
        self.access = access
        self.visible = {c.lower(): (c, t) for c, t in visible.items()}
        self.values: dict[str, str] = {}  # visible column -> v name
        self.keys: list[tuple[exp.Expr, str]] = []  # grouping expression -> k/v name
        self.measures: dict[str, Measure] = {}

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

    def _bounds(self, column: str) -> tuple[float | None, float | None]:
        policy = self.access.columns.get(column)
        if policy is None:
            lowered = {c.lower(): p for c, p in self.access.columns.items()}
            policy = lowered.get(column.lower())
        return (None, None) if policy is None else (policy.lower, policy.upper)

    def _integer(self, column: str) -> bool:
        _, duck_type = self.visible[column.lower()]
        return _is_integer_type(duck_type)

    def measure(self, kind: str, column: str | None) -> exp.Column:
        value = None if column is None else self.values[column]
        name = "m_count" if column is None else f"m_{kind}_{value}"
        if name not in self.measures:
            sensitivity, integer, centre = 1.0, True, 0.0
            if kind in ("sum", "sumsq") and column is not None:
                lower, upper = self._bounds(column)
                if lower is None or upper is None:
                    sensitivity = math.inf
                else:
                    low, high = float(lower), float(upper)
                    if self._integer(column):
                        low, high = float(math.floor(low)), float(math.ceil(high))
                    sensitivity = max(abs(low), abs(high))
                    if kind == "sumsq" and not self.centred:
                        sensitivity = sensitivity ** 2
                    elif kind == "sumsq":  # around the midpoint: Measure
                        centre = (low + high) / 2
                        sensitivity = ((high - low) / 2) ** 2
                integer = self._integer(column)
            self.measures[name] = Measure(name, kind, value, sensitivity, integer, centre)
        return exp.column(name)

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
            return self.measure("count", None)
        if not isinstance(argument, exp.Column):
            raise _refuse(f"{kind} takes one column in dp mode, e.g. {kind}(x); compute "
                          "expressions of the result instead (SUM(x) * 2, not SUM(x * 2))",
                          node)
        column, _ = self.visible[argument.name.lower()]
        self.value(argument)
        if kind == "COUNT":
            return self.measure("count", column)
        if kind == "SUM":
            return self.measure("sum", column)
        total, count = self.measure("sum", column), self.measure("count", column)
        if kind == "AVG":
            return _ratio(total, count)
        squares = self.measure("sumsq", column)
        centre = self.measures[squares.name].centre
        mean: exp.Expr = _ratio(total, count)
        if centre:  # Σ(x − c)²/n − (Σx/n − c)²: the same variance (see Measure)
            mean = exp.Paren(this=exp.Sub(this=mean, expression=exp.Paren(
                this=exp.Literal.number(repr(centre)))))
        variance = _nonneg(exp.Sub(this=_ratio(squares, count),
                                   expression=exp.Mul(this=mean, expression=mean.copy())))
        if kind == "VAR":
            return variance
        return exp.Sqrt(this=variance)

    def noisy(self, node: exp.Expr, what: str) -> exp.Expr:
        """An expression over aggregates (and grouping keys), over measurements."""
        node = node.copy()
        if not node.find(exp.AggFunc) and not _compiled(node) and self.key_for(node) is None:
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
            if isinstance(child, exp.Column) and child.table:
                raise _refuse(
                    f"Column '{child.name}' is used outside an aggregate; in dp mode "
                    f"{_WRITE}, or add it to GROUP BY", child)
            return child

        return _guard_divisions(node.transform(swap))


def _guard_divisions(node: exp.Expr) -> exp.Expr:
    """An analyst's division by a noisy value is NULL unless the denominator is positive."""
    def guard(child: exp.Expr) -> exp.Expr:
        if isinstance(child, exp.Div) and not child.meta.get(_GUARDED) \
                and _reads_measures(child.expression):
            return _ratio(child.this, child.expression)
        return child
    return node.transform(guard)


def _compiled(node: exp.Expr) -> bool:
    """Whether ``node`` reads a measurement or key already compiled (unqualified names)."""
    return any(not c.table for c in node.find_all(exp.Column))


def _reads_measures(node: exp.Expr) -> bool:
    return any(c.name.startswith("m_") and not c.table for c in node.find_all(exp.Column))


def _is_integer_type(duck_type: str) -> bool:
    base = duck_type.upper().split("(")[0].strip()
    return base in {"TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT",
                    "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "INT1", "INT2", "INT4",
                    "INT8", "BOOLEAN"}


def render(node: exp.Expr, *, unclamped: bool = False, signed_roots: bool = False) -> str:
    """DuckDB SQL of a release expression; ``NONNEG`` makes a negative value 0.

    Unclamped (the parts a network node merges), nothing is made non-negative and
    a ratio is NULL only when its noisy denominator is 0: a negative noisy count
    still carries the noisy sums it divides.

    >>> render(exp.Anonymous(this=NONNEG, expressions=[exp.column("m_v")]))
    'TRY(CASE WHEN m_v < 0 THEN 0 ELSE m_v END)'
    >>> render(exp.Anonymous(this=NONNEG, expressions=[exp.column("m_v")]), unclamped=True)
    'TRY(m_v)'
    >>> render(_nonneg(_ratio(exp.column("m_s"), exp.column("m_n"))), unclamped=True)
    'TRY(CASE WHEN m_n <> 0 THEN CAST(m_s AS DOUBLE) / m_n END)'
    """
    def signed(child: exp.Expr) -> exp.Expr:
        if isinstance(child, exp.Sqrt):
            inner = child.this
            return exp.Mul(this=exp.Anonymous(this="SIGN", expressions=[inner.copy()]),
                           expression=exp.Sqrt(this=exp.Abs(this=inner)))
        return child

    def swap(child: exp.Expr) -> exp.Expr:
        if isinstance(child, exp.Anonymous) and child.name == NONNEG:
            # transform() does not walk into a node that replaces another: do it here.
            inner = child.expressions[0].transform(swap)
            return inner if unclamped else exp.Case(
                ifs=[exp.If(this=exp.LT(this=inner.copy(), expression=exp.Literal.number(0)),
                            true=exp.Literal.number(0))], default=inner)
        if unclamped and isinstance(child, exp.GT) and child.meta.get(_POSITIVE):
            return exp.NEQ(this=child.this.copy(), expression=child.expression.copy())
        return child
    body = node.copy().transform(swap)
    if signed_roots:
        body = body.transform(signed)
    return f"TRY({body.sql(dialect='duckdb')})"


def translate(
    expression: exp.Expr,
    *,
    principal: Principal,
    catalog: Catalog,
    schemas: Schemas,
    centred: bool = False,
) -> DpQuery:
    """Check a qualified query against ``dp`` mode and compile it (see the module doc).

    ``centred``: take sums of squares around the midpoint of each column's bounds (the
    parts a network node merges, see :class:`Measure`).
    """
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
    tr = _Translator(access, visible, centred=centred)

    group = select.args.get("group")
    for node in group.expressions if group else []:
        tr.add_key(node)
    public = _public_keys(access, tr) if group else None
    if group and public is None:
        tr.measures[KEYCOUNT] = Measure(KEYCOUNT, "keys")

    outputs: list[OutputColumn] = []
    by_name: dict[str, exp.Expr] = {}
    for projection in select.expressions:
        name, body = _strip_alias(projection)
        if isinstance(body, exp.Star):
            raise _refuse("dp mode returns aggregates only; " + _WRITE, body)
        key = tr.key_for(body)
        if key is not None:
            release: exp.Expr = exp.column(key)
            outputs.append(OutputColumn(name, noisy=False, sql=render(release)))
        else:
            release = tr.noisy(body, "Column")
            reads = tuple(dict.fromkeys(c.name for c in release.find_all(exp.Column)
                                        if c.name.startswith("m_")))
            single = isinstance(body, exp.Count | exp.Sum) and len(reads) == 1
            if single and isinstance(body, exp.Sum) and tr.measures[reads[0]].integer:
                # The sum of whole numbers is released as a whole number.
                release = exp.Cast(this=exp.Round(this=release),
                                   to=exp.DataType.build("BIGINT"))
            outputs.append(OutputColumn(
                name, noisy=True, sql=render(release), measures=reads, single=single,
                unclamped_sql=render(release, unclamped=True),
                spread_sql=render(release, unclamped=True, signed_roots=True)))
        by_name.setdefault(name, release)

    def post(node: exp.Expr, what: str) -> exp.Expr:
        """HAVING/ORDER BY: an output's name stands for its release; the rest is compiled."""
        def to_output(child: exp.Expr) -> exp.Expr:
            if isinstance(child, exp.Column) and not child.table and child.name in by_name:
                return exp.Paren(this=by_name[child.name].copy())
            return child

        return tr.noisy(node.copy().transform(to_output), what)

    having_node = select.args.get("having")
    having = render(post(having_node.this, "HAVING column")) if having_node else None
    order: list[tuple[str, bool]] = []
    order_node = select.args.get("order")
    for ordered in order_node.expressions if order_node else []:
        order.append((render(post(ordered.this, "ORDER BY column")),
                      bool(ordered.args.get("desc"))))
    limit = None
    limit_node = select.args.get("limit")
    if limit_node is not None:
        count = limit_node.expression
        if not (isinstance(count, exp.Literal) and count.is_int):
            raise _refuse("LIMIT takes a number in dp mode", limit_node)
        limit = int(count.name)

    relation = _relation(select, access, source, list(visible), principal, tr)
    bounds = tuple(
        (v, *tr._bounds(c)) for c, v in tr.values.items()
    )
    measures = tuple(sorted(tr.measures.values(), key=lambda m: (m.kind != "keys",)))
    keys = tuple(name for _, name in tr.keys)
    query = DpQuery(
        access=access,
        relation_sql=relation,
        aggregate_sql="",
        keys=keys,
        measures=measures,
        outputs=tuple(outputs),
        having=having,
        order=tuple(order),
        limit=limit,
        bounds=bounds,
        grouped=group is not None,
        normalized=select.sql(dialect="duckdb", identify=True, normalize=True),
        public_keys=public,
        public_key_types=_key_types(tr) if public is not None else (),
        integer_values=frozenset(v for c, v in tr.values.items() if tr._integer(c)),
    )
    from gateway.dp.aggregate import aggregate_sql

    shown = aggregate_sql(query, relation=RELATION, sample=False)
    return DpQuery(**{**query.__dict__, "aggregate_sql": shown})


def _public_keys(access: TableAccess, tr: _Translator) -> tuple[tuple[Any, ...], ...] | None:
    """The declared values of every grouping column, or None if one is not declared."""
    declared = {c.lower(): v for c, v in access.public_keys.items()}
    grid: list[tuple[Any, ...]] = []
    by_value = {v: c for c, v in tr.values.items()}
    for node, name in tr.keys:
        column = by_value.get(name) if isinstance(node, exp.Column) else None
        if column is None or column.lower() not in declared:
            return None
        grid.append(tuple(declared[column.lower()]))
    return tuple(grid)


def _key_types(tr: _Translator) -> tuple[str, ...]:
    by_value = {v: c for c, v in tr.values.items()}
    return tuple(tr.visible[by_value[name].lower()][1] for _, name in tr.keys)


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
