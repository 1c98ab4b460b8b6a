"""``aggregate`` mode: only aggregates, and no group smaller than the policy allows.

Every ``SELECT`` block that reads an aggregate-mode table *directly* (in its own
``FROM``/``JOIN``) must aggregate: each output column, ``HAVING``, ``ORDER BY``,
``QUALIFY`` and window expression is built from aggregates and ``GROUP BY``
keys only. The rule then adds to the block's ``HAVING``, per aggregate-mode table
``t`` with privacy unit ``u`` and minimum ``k``::

    COUNT(DISTINCT t.u) >= k                                   -- the group
    AND COUNT(DISTINCT t.u) FILTER (WHERE <arg> IS NOT NULL
                                    [AND <filter>]) >= k       -- each aggregate

so a group is dropped (suppressed) unless it, and the rows each of its
aggregates actually read, cover at least ``k`` people. ``HAVING`` runs before
window functions, ``QUALIFY``, ``DISTINCT``, ``ORDER BY`` and ``LIMIT``, so none
of them ever sees a suppressed group. Blocks that read the output of such a
block (an outer query, a CTE reader, a set operation) only see released groups.

The unit is usually hidden: :func:`policy.rules.apply_table_policy.apply_table_policy`
exposes it to the block as :data:`UNIT_ALIAS`, a name added *after* the columns
were validated (so the analyst can never name it: it is not in their schema) and
reserved (an identifier starting with ``__stockade`` is refused). Stars other than
``COUNT(*)`` and positional columns (``#1``), which DuckDB would expand over the
subquery at run time, are refused in these queries.

>>> from policy.loader import parse_policy
>>> from policy.pipeline import plan_query
>>> from policy.principal import Principal
>>> policy = parse_policy('''
... version: 1
... domain: {name: d}
... datasets:
...   s:
...     tables:
...       t:
...         source: {format: csv, path: t.csv}
...         privacy_unit: pid
...         columns: {pid: {hidden: true}}
... roles:
...   auditor: {datasets: {s: {mode: aggregate, min_group_size: 5}}}
... ''', base_dir="/")
>>> plan = plan_query("SELECT site, count(*) AS n FROM t GROUP BY site", policy=policy,
...     principal=Principal("a", "auditor"),
...     schemas={("s", "t"): {"pid": "INTEGER", "site": "VARCHAR"}})
>>> print(plan.sql.replace(" FROM", "\\nFROM").replace(" HAVING", "\\nHAVING"))
SELECT "t"."site" AS "site", COUNT(*) AS "n"
FROM (SELECT "t"."site", "t"."pid" AS "__stockade_unit"
FROM "s"."t") AS "t" GROUP BY "t"."site"
HAVING COUNT(DISTINCT "t"."__stockade_unit") >= 5 LIMIT 1000000
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from gateway.errors import ForbiddenFunctionError, NotSupportedError, SqlError
from policy.access import TableAccess
from policy.functions import function_name
from policy.locate import location
from policy.schema import Catalog, access_for

#: The name under which a policy subquery exposes an aggregate-mode table's
#: privacy unit to the block that counts it.
UNIT_ALIAS = "__stockade_unit"

#: ``exp.Table.meta`` key set on aggregate-mode tables this rule has checked.
UNIT_META = "stockade_unit"

_RESERVED_PREFIX = "__stockade"

#: Aggregates allowed over aggregate-mode rows: counts and moments. Each mixes
#: every contributing row into one number.
ALLOWED_AGGREGATES: tuple[type[exp.Expr], ...] = (
    exp.Count, exp.CountIf, exp.ApproxDistinct, exp.Sum, exp.Avg,
    exp.Stddev, exp.StddevPop, exp.StddevSamp, exp.Variance, exp.VariancePop,
    exp.Corr, exp.CovarPop, exp.CovarSamp, exp.Kurtosis, exp.Skewness,
    exp.RegrAvgx, exp.RegrAvgy, exp.RegrCount, exp.RegrIntercept, exp.RegrR2,
    exp.RegrSlope, exp.RegrSxx, exp.RegrSxy, exp.RegrSyy,
)  # fmt: skip

#: The same, for aggregates sqlglot leaves untyped (lowercased names).
ALLOWED_AGGREGATE_NAMES = frozenset(
    {"count_star", "mean", "favg", "fsum", "sumkahan", "kahan_sum", "sem", "kurtosis_pop"}
)

#: Untyped DuckDB aggregates that are refused (they are aggregates all the same).
_OTHER_AGGREGATE_NAMES = frozenset(
    """histogram entropy mad product arbitrary reservoir_quantile list string_agg
    group_concat listagg array_agg first last any_value arg_min arg_max argmin argmax
    min_by max_by bool_and bool_or bit_and bit_or bit_xor quantile quantile_cont
    quantile_disc percentile_cont percentile_disc approx_quantile median mode min max
    """.split()
)

_ALLOWED_TEXT = (
    "COUNT, COUNT(DISTINCT …), COUNT_IF, SUM, AVG, STDDEV, VARIANCE, CORR, COVAR, REGR_…"
)

# Why a refused aggregate would show individual rows, by function name.
_WHY = {
    **dict.fromkeys(
        ("min", "max", "median", "quantile", "quantile_cont", "quantile_disc",
         "percentile_cont", "percentile_disc", "approx_quantile", "reservoir_quantile",
         "mode", "first", "last", "any_value", "arbitrary", "arg_min", "arg_max",
         "argmin", "argmax", "min_by", "max_by", "mad", "bool_and", "bool_or",
         "bit_and", "bit_or", "bit_xor", "product"),
        "it returns (or is determined by) one person's value",
    ),
    **dict.fromkeys(
        ("list", "array_agg", "string_agg", "group_concat", "listagg", "histogram",
         "entropy"),
        "it lists individual values",
    ),
}  # fmt: skip

# Select clauses an aggregating block may use; anything else is refused.
_SELECT_ARGS = frozenset(
    {"with_", "expressions", "distinct", "from_", "joins", "where", "group", "having",
     "qualify", "order", "limit", "offset"}
)


class AggregateOnlyError(SqlError):
    """A query that would show aggregate-mode rows, or a privacy unit, to the analyst."""


@dataclass
class _Block:
    """One SELECT scope that reads aggregate-mode tables directly."""

    select: exp.Select
    tables: dict[str, TableAccess]  # source alias -> access, in FROM order
    aliases: set[str]  # every source alias of the block
    keys: list[exp.Expr] = field(default_factory=list)
    aggregates: list[exp.Expr] = field(default_factory=list)  # Filter or aggregate call


def enforce_aggregate(expression: exp.Expr, *, catalog: Catalog, **_: object) -> exp.Expr:
    """Refuse row-level use of aggregate-mode tables and add the group-size threshold."""
    protected = [
        t for t in expression.find_all(exp.Table)
        if t.db and access_for(catalog, t).mode == "aggregate"
    ]  # fmt: skip
    if not protected:
        return expression
    _check_reserved(expression)
    scopes = traverse_scope(expression)
    blocks: list[_Block] = []
    for scope in scopes:
        tables = {
            table.alias_or_name: access_for(catalog, table)
            for table in scope.tables
            if table.db and access_for(catalog, table).mode == "aggregate"
        }
        if not tables:
            continue
        if not isinstance(scope.expression, exp.Select):
            raise NotSupportedError(_cannot_analyse(next(iter(tables.values()))))
        for table in scope.tables:
            if table.db and access_for(catalog, table).mode == "aggregate":
                table.meta[UNIT_META] = True
        blocks.append(_Block(scope.expression, tables, set(scope.sources)))
    for table in protected:
        if not table.meta.get(UNIT_META):
            raise NotSupportedError(_cannot_analyse(access_for(catalog, table)))
    for scope in scopes:
        _check_units(scope, catalog)
    for block in blocks:
        _check_block(block)
    for block in blocks:
        _add_threshold(block)
    return expression


# -- the whole query ------------------------------------------------------------------


def _cannot_analyse(access: TableAccess) -> str:
    return (
        f"Table '{access.qualified_name}' is in 'aggregate' mode for your role and is read "
        "in a way the gateway cannot check; read it in the FROM of a SELECT with GROUP BY "
        "or aggregates"
    )


def _check_reserved(expression: exp.Expr) -> None:
    """Internal names, stars DuckDB would expand late, positional columns: refused."""
    for node in expression.walk():
        line, col = location(node)
        if isinstance(node, exp.Identifier) and node.name.lower().startswith(_RESERVED_PREFIX):
            raise AggregateOnlyError(
                f"Names starting with '{_RESERVED_PREFIX}' are reserved; rename '{node.name}'",
                line=line, col=col,
            )  # fmt: skip
        if isinstance(node, exp.PositionalColumn):
            raise AggregateOnlyError(
                "Positional column references (#n) are not allowed on aggregate-mode tables; "
                "name the column", line=line, col=col,
            )  # fmt: skip
        if isinstance(node, exp.Star) and not (
            isinstance(node.parent, exp.Count) and node.arg_key == "this"
        ):
            raise AggregateOnlyError(
                "'*' is only allowed as COUNT(*) in queries on aggregate-mode tables; "
                "list the columns you need", line=line, col=col,
            )  # fmt: skip


def _find_source(scope: Scope, name: str) -> object:
    current: Scope | None = scope
    while current is not None:
        if name in current.sources:
            return current.sources[name]
        current = current.parent
    return None


def _check_units(scope: Scope, catalog: Catalog) -> None:
    """The privacy unit may only be counted, or equated with a column in a JOIN ON."""
    uses: list[tuple[exp.Column, TableAccess]] = []
    for column in scope.columns:
        source = _find_source(scope, column.table) if column.table else None
        if isinstance(source, exp.Table) and source.db:
            uses.append((column, access_for(catalog, source)))
    # sqlglot's scope leaves out unqualified columns under HAVING (they may name an
    # output); DuckDB may still bind them to the table, so take them as the unit.
    direct = [access_for(catalog, t) for t in scope.tables if t.db]
    for node in _walk_block(scope.expression):
        if isinstance(node, exp.Column) and not node.table and node is not scope.expression:
            uses.extend((node, access) for access in direct)
    # Report GROUP BY first: "SELECT pid, count(*) … GROUP BY pid" is about grouping.
    for column, access in sorted(uses, key=lambda use: _clause_of(use[0]) != "group"):
        unit = access.privacy_unit
        if access.mode != "aggregate" or unit is None or column.name.lower() != unit.lower():
            continue
        if _counted(column) or _join_key(column):
            continue
        line, col = location(column)
        clause = _clause_of(column)
        why = {
            "group": "grouping by it would make one group per person",
            "where": "a condition on it singles out people",
            "joins": "a condition on it singles out people",
            "having": "a condition on it singles out people",
            "expressions": "showing it would show individual rows",
        }.get(clause or "", "it identifies one person")
        raise AggregateOnlyError(
            f"Column '{column.name}' is the privacy unit of table '{access.qualified_name}' "
            f"('aggregate' mode for your role): {why}. It may only be counted, "
            f"COUNT(DISTINCT {column.name}), or used to join tables (a = b in JOIN … ON)",
            line=line,
            col=col,
        )


def _counted(column: exp.Column) -> bool:
    parent = column.parent
    if isinstance(parent, exp.Distinct) and len(parent.expressions) == 1:
        parent = parent.parent
    return isinstance(parent, (exp.Count, exp.ApproxDistinct)) and not isinstance(
        parent.parent, exp.Window
    )


def _join_key(column: exp.Column) -> bool:
    eq = column.parent
    if not (isinstance(eq, exp.EQ) and isinstance(eq.this, exp.Column)
            and isinstance(eq.expression, exp.Column)):
        return False  # fmt: skip
    node: exp.Expr | None = eq
    while node is not None and isinstance(node.parent, (exp.And, exp.Paren)):
        node = node.parent
    return node is not None and isinstance(node.parent, exp.Join) and node.arg_key == "on"


def _clause_of(node: exp.Expr) -> str | None:
    while node.parent is not None and not isinstance(node.parent, exp.Select):
        node = node.parent
    return node.arg_key if node.parent is not None else None


# -- one block ------------------------------------------------------------------------


def _row_level(block: _Block, node: exp.Expr | None = None) -> AggregateOnlyError:
    access = next(iter(block.tables.values()))
    line, col = location(node) if node is not None else (None, None)
    k = access.min_group_size
    return AggregateOnlyError(
        f"Table '{access.qualified_name}' is in 'aggregate' mode for your role: every output "
        "column must be an aggregate (COUNT, SUM, AVG, …) or a GROUP BY key; groups covering "
        f"fewer than {k} people are suppressed.",
        line=line,
        col=col,
    )


def _check_block(block: _Block) -> None:
    select = block.select
    for name, value in select.args.items():
        if value and name not in _SELECT_ARGS:
            raise NotSupportedError(
                f"{name.upper()} is not supported in a query on an aggregate-mode table"
            )
    for join in select.args.get("joins") or []:
        if join.args.get("method"):
            raise NotSupportedError(
                f"{join.args['method']} joins are not supported with aggregate-mode tables; "
                "write JOIN … ON"
            )
    for access in block.tables.values():
        if not access.min_group_size or not access.privacy_unit:
            raise NotSupportedError(
                f"Table '{access.qualified_name}' has no privacy unit or minimum group size "
                "in the policy; ask the data owner to set them"
            )
    distinct = select.args.get("distinct")
    group = select.args.get("group")
    if isinstance(group, exp.Group) and group.args.get("all"):
        # DuckDB's GROUP BY ALL: every output without an aggregate, made explicit.
        # Constants are left out: a number would be read as a position.
        keys = [
            p.unalias().copy() for p in select.expressions
            if not _has_aggregate(p) and not isinstance(p.unalias(), exp.Literal)
        ]  # fmt: skip
        group.set("all", None)
        group.set("expressions", keys)
    if group is None and not select.args.get("having") and not any(
        _has_aggregate(e) for e in _clauses(select)
    ):
        if isinstance(distinct, exp.Distinct) and not distinct.args.get("on"):
            # SELECT DISTINCT a, b is GROUP BY a, b: each distinct row is a group.
            keys = [p.unalias().copy() for p in select.expressions
                    if not isinstance(p.unalias(), exp.Literal)]
            select.set("group", exp.Group(expressions=keys or [exp.Tuple()]))
        else:
            raise _row_level(block, select.expressions[0] if select.expressions else None)
    group = select.args.get("group")
    if isinstance(group, exp.Group):
        block.keys = list(_keys(group))
        for key in block.keys:
            _check_key(key, block, "GROUP BY")
    outputs = {p.alias_or_name.lower() for p in select.expressions}
    for projection in select.expressions:
        _grouped(projection.unalias(), block, outputs=set())
    for clause in ("having", "qualify"):
        node = select.args.get(clause)
        if node is not None:
            _grouped(node.this, block, outputs=set())
    if isinstance(distinct, exp.Distinct) and distinct.args.get("on"):
        for node in distinct.args["on"].expressions:
            _grouped(node, block, outputs=outputs)
    order = select.args.get("order")
    if order is not None:
        for ordered in order.expressions:
            _grouped(ordered.this, block, outputs=outputs)


def _clauses(select: exp.Select) -> Iterator[exp.Expr]:
    yield from select.expressions
    for name in ("having", "qualify", "order"):
        node = select.args.get(name)
        if node is not None:
            yield node


def _keys(group: exp.Group) -> Iterator[exp.Expr]:
    for node in group.expressions:
        if isinstance(node, (exp.Rollup, exp.Cube, exp.GroupingSets)):
            for item in node.expressions:
                yield from _flatten(item)
        else:
            yield from _flatten(node)
    for name in ("rollup", "cube", "grouping_sets"):
        for node in group.args.get(name) or []:
            for item in node.expressions:
                yield from _flatten(item)


def _flatten(node: exp.Expr) -> Iterator[exp.Expr]:
    if isinstance(node, exp.Tuple):
        for item in node.expressions:
            yield from _flatten(item)
    elif isinstance(node, exp.Paren):
        yield from _flatten(node.this)
    else:
        yield node


def _aggregate_parts(node: exp.Expr) -> tuple[exp.Expr, exp.Expr | None] | None:
    """``(function, filter condition)`` when ``node`` is an aggregate call, else None."""
    condition = None
    inner = node
    if isinstance(inner, exp.Filter):
        where = inner.expression
        condition = where.this if isinstance(where, exp.Where) else where
        inner = inner.this
    if isinstance(inner, exp.WithinGroup):
        inner = inner.this
    while isinstance(inner, (exp.IgnoreNulls, exp.RespectNulls)):
        inner = inner.this
    if isinstance(inner, exp.AggFunc) or (
        isinstance(inner, exp.Anonymous)
        and str(inner.name).lower() in ALLOWED_AGGREGATE_NAMES | _OTHER_AGGREGATE_NAMES
    ):
        return inner, condition
    return None


def _has_aggregate(node: exp.Expr) -> bool:
    for child in _walk_block(node):
        if isinstance(child, exp.Query) and child is not node:
            continue
        if _aggregate_parts(child) is not None and not isinstance(child.parent, exp.Window):
            return True
    return False


def _walk_block(node: exp.Expr) -> Iterator[exp.Expr]:
    """``node`` and its descendants; subqueries are yielded but not entered."""
    yield node
    if isinstance(node, exp.Query):
        return
    for child in node.iter_expressions():
        yield from _walk_block(child)


def _outer_columns(query: exp.Expr, aliases: set[str]) -> list[exp.Column]:
    """Columns inside ``query`` that refer to one of ``aliases`` of an enclosing block."""
    found = []
    for column in query.find_all(exp.Column):
        if not column.table or column.table not in aliases:
            continue
        node: exp.Expr | None = column
        bound = False
        while node is not None and node is not query.parent:
            if isinstance(node, exp.Select) and column.table in _source_names(node):
                bound = True
                break
            node = node.parent
        if not bound:
            found.append(column)
    return found


def _source_names(select: exp.Select) -> set[str]:
    names = set()
    from_ = select.args.get("from_")
    sources = [from_.this] if from_ is not None else []
    sources += [j.this for j in select.args.get("joins") or []]
    for source in sources:
        names.add(source.alias_or_name)
    return names


def _check_key(node: exp.Expr, block: _Block, where: str) -> None:
    for child in _walk_block(node):
        if isinstance(child, exp.Query) and _outer_columns(child, block.aliases):
            raise _correlated(child, where)
        if isinstance(child, exp.Window):
            raise _no_window(child)


def _correlated(node: exp.Expr, where: str) -> NotSupportedError:
    line, col = location(node)
    at = f" (line {line}, column {col})" if line is not None else ""
    return NotSupportedError(
        f"A subquery in {where} of a query on an aggregate-mode table may not refer to its "
        f"rows{at}; join the other table or move the subquery to WHERE"
    )


def _no_window(node: exp.Expr) -> AggregateOnlyError:
    line, col = location(node)
    return AggregateOnlyError(
        "Window functions over aggregate-mode rows are not allowed; use them over "
        "aggregates (rank() OVER (ORDER BY count(*))) or in an outer query",
        line=line, col=col,
    )  # fmt: skip


def _grouped(node: exp.Expr, block: _Block, *, outputs: set[str]) -> None:
    """Raise unless ``node`` is built from GROUP BY keys, aggregates and constants."""
    if any(node == key for key in block.keys):
        return
    parts = _aggregate_parts(node)
    if parts is not None:
        _check_aggregate(node, parts[0], block)
        block.aggregates.append(node)
        return
    if isinstance(node, exp.Window):
        function = node.this
        while isinstance(function, (exp.IgnoreNulls, exp.RespectNulls, exp.Filter)):
            function = function.this
        for child in function.iter_expressions():
            _grouped(child, block, outputs=outputs)
        for child in node.args.get("partition_by") or []:
            _grouped(child, block, outputs=outputs)
        order = node.args.get("order")
        for ordered in order.expressions if order is not None else []:
            _grouped(ordered.this, block, outputs=outputs)
        if node.args.get("spec") is not None:
            for child in node.args["spec"].iter_expressions():
                _grouped(child, block, outputs=outputs)
        return
    if isinstance(node, exp.Query):
        if _outer_columns(node, block.aliases):
            raise _correlated(node, "SELECT, HAVING or ORDER BY")
        return
    if isinstance(node, exp.Column):
        if not node.table and node.name.lower() in outputs:
            return  # ORDER BY an output column
        if not node.table or node.table in block.aliases:
            raise _row_level(block, node)
        return  # a column of an enclosing query: one value per evaluation
    for child in node.iter_expressions():
        _grouped(child, block, outputs=outputs)


def _check_aggregate(node: exp.Expr, function: exp.Expr, block: _Block) -> None:
    line, col = location(function)
    if isinstance(function, exp.Grouping):
        for child in function.expressions:
            if not any(child == key for key in block.keys):
                raise _row_level(block, child)
        return
    allowed = isinstance(function, ALLOWED_AGGREGATES) or (
        isinstance(function, exp.Anonymous)
        and str(function.name).lower() in ALLOWED_AGGREGATE_NAMES
    )
    if not allowed or (isinstance(node, exp.Filter) and isinstance(node.this, exp.WithinGroup)):
        name = function_name(function) if isinstance(function, exp.Func) else function.key
        why = _WHY.get(name, "it is not a count or a moment")
        raise ForbiddenFunctionError(
            f"Aggregate '{name}' is not allowed on aggregate-mode tables: {why}. "
            f"Allowed: {_ALLOWED_TEXT}",
            line=line,
            col=col,
        )
    for child in _walk_block(node):
        if child is node or child is function:
            continue
        if isinstance(child, exp.Window):
            raise _no_window(child)
        if _aggregate_parts(child) is not None:
            raise AggregateOnlyError("Aggregates cannot be nested", line=line, col=col)
        if isinstance(child, exp.Order):
            raise NotSupportedError(
                "ORDER BY inside an aggregate is not supported on aggregate-mode tables"
            )
        if isinstance(child, exp.Query) and _outer_columns(child, block.aliases):
            raise _correlated(child, "an aggregate")
    columns = [c for c in node.find_all(exp.Column) if c.table]
    if columns and not any(c.table in block.aliases for c in columns):
        raise NotSupportedError(
            "An aggregate of only an enclosing query's columns is not supported on "
            "aggregate-mode tables"
        )


# -- the rewrite ----------------------------------------------------------------------


def _values(function: exp.Expr) -> tuple[list[exp.Expr], list[exp.Expr]]:
    """(arguments that must be non-NULL, conditions that must hold) for a row to count."""
    if isinstance(function, exp.CountIf):
        return [], [function.this]
    if isinstance(function, exp.Anonymous):
        args = list(function.expressions[:1])
    else:
        args = [a for a in (function.this, function.args.get("expression")) if a is not None]
    values: list[exp.Expr] = []
    for arg in args:
        if isinstance(arg, exp.Star):
            continue
        values.extend(arg.expressions if isinstance(arg, exp.Distinct) else [arg])
    return values, []


def _contributing(node: exp.Expr) -> exp.Expr | None:
    """The condition under which a row feeds aggregate ``node``; None for every row."""
    parts = _aggregate_parts(node)
    assert parts is not None
    function, condition = parts
    if isinstance(function, exp.Grouping):
        return None
    values, conditions = _values(function)
    terms: list[exp.Expr] = [
        exp.Not(this=exp.Is(this=v.copy(), expression=exp.Null())) for v in values
    ]
    terms += [exp.paren(c.copy(), copy=False) for c in conditions]
    if condition is not None:
        terms.append(exp.paren(condition.copy(), copy=False))
    return exp.and_(*terms, copy=False) if terms else None


def _add_threshold(block: _Block) -> None:
    conditions: dict[str, exp.Expr] = {}
    for alias, access in block.tables.items():
        assert access.min_group_size is not None
        unit = exp.column(UNIT_ALIAS, table=alias, quoted=True)
        minimum = exp.Literal.number(access.min_group_size)
        count = exp.Count(this=exp.Distinct(expressions=[unit]))
        conditions.setdefault(count.sql("duckdb"), exp.GTE(this=count, expression=minimum))
        for node in block.aggregates:
            contributing = _contributing(node)
            if contributing is None:
                continue
            filtered = exp.Filter(
                this=exp.Count(this=exp.Distinct(expressions=[unit.copy()])),
                expression=exp.Where(this=contributing),
            )
            conditions.setdefault(
                filtered.sql("duckdb"), exp.GTE(this=filtered, expression=minimum.copy())
            )
    threshold = exp.and_(*conditions.values(), copy=False)
    having = block.select.args.get("having")
    if having is not None:
        # The analyst's condition is evaluated only on groups that pass the threshold
        # (DuckDB evaluates a CASE branch only for the rows it selects; AND promises no
        # order): a condition that fails, or is slow, on a suppressed group never runs.
        threshold = exp.Case(ifs=[exp.If(this=threshold,
                                         true=exp.paren(having.this, copy=False))],
                             default=exp.false())
    block.select.set("having", exp.Having(this=threshold))
