"""Split a federated aggregate into the parts each domain answers and the query that merges them.

A query on ``federated.DATASET.TABLE`` becomes two queries:

* the **domain query**, the same for every domain: the GROUP BY keys (named ``__g0``,
  ``__g1``, …) and the mergeable parts of every aggregate (``__p0``, ``__p1``, …), read
  from ``DATASET.TABLE`` with the analyst's WHERE;
* the **final query**, run by the network over the merged parts (one row per group): the
  analyst's select list, HAVING, ORDER BY and LIMIT, with each aggregate replaced by its
  merged value.

>>> s = split("SELECT site, AVG(age) AS a FROM federated.onc.scr GROUP BY site")
>>> s.domain_sql
'SELECT site AS __g0, SUM(age) AS __p0, COUNT(age) AS __p1 FROM onc.scr GROUP BY site'
>>> print(s.final.sql("duckdb").replace(" FROM", "\\nFROM"))
SELECT __g0 AS "site", __a0 AS "a", domain_count, __s0, __s1, __a0, __domains
FROM merged ORDER BY __g0
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import duckdb
from sqlglot import exp

from gateway.errors import (
    ForbiddenFunctionError,
    InputError,
    NotSupportedError,
    RefusedStatementError,
    SqlError,
)
from policy.functions import function_name, is_allowed
from policy.locate import location
from policy.rules.check_functions import _name_location
from policy.rules.check_types import check_types
from policy.rules.parse import parse

FEDERATED = "federated"
DOMAIN_COUNT = "domain_count"
MERGED = "merged"
DOMAINS = "__domains"
MERGEABLE = ("COUNT(*), COUNT, SUM, AVG, MIN, MAX, VAR_SAMP/VARIANCE, VAR_POP, "
             "STDDEV/STDDEV_SAMP and STDDEV_POP")

# What each analyst aggregate is, by sqlglot class.
_KINDS: dict[type[exp.Expr], str] = {
    exp.Count: "count", exp.Sum: "sum", exp.Min: "min", exp.Max: "max", exp.Avg: "avg",
    exp.Variance: "var_samp", exp.VariancePop: "var_pop", exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp", exp.StddevPop: "stddev_pop",
}
_VARIANCES = ("var_samp", "var_pop", "stddev_samp", "stddev_pop")
# The parts an analyst aggregate needs from every domain, in order.
_NEEDS: dict[str, tuple[str, ...]] = {
    "count": ("count",), "sum": ("sum",), "min": ("min",), "max": ("max",),
    "avg": ("sum", "count"), **{v: ("count", "avg", "var_pop") for v in _VARIANCES},
}
# The aggregate a domain computes for each part kind.
_PART_FUNCS: dict[str, type[exp.Func]] = {
    "count": exp.Count, "sum": exp.Sum, "min": exp.Min, "max": exp.Max, "avg": exp.Avg,
    "var_pop": exp.VariancePop,
}
_ORDER_STATISTICS = tuple(getattr(exp, name) for name in (
    "Median", "Quantile", "PercentileCont", "PercentileDisc", "ApproxQuantile",
    "ApproxQuantiles", "Mode", "ApproxTopK") if hasattr(exp, name))
# Select clauses a federated query may use; any other (QUALIFY, SAMPLE, …) is refused.
_CLAUSES = {"expressions", "from_", "where", "group", "having", "order", "limit", "offset",
            "kind", "hint", "operation_modifiers"}
_TABLE_ARGS = {"this", "db", "catalog", "alias"}


@dataclass(frozen=True)
class Part:
    """One aggregate every domain computes, named ``alias`` in its answer."""

    alias: str
    kind: str  # count | sum | min | max | avg | var_pop
    arg: str  # the normalised argument; "*" for COUNT(*)
    expr: exp.Expr


@dataclass(frozen=True)
class Aggregate:
    """One analyst aggregate, merged into column ``alias`` from ``parts`` (see _NEEDS)."""

    alias: str
    kind: str
    arg: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Output:
    """One output column: its name and its expression over the merged columns."""

    name: str
    expr: exp.Expr


@dataclass(frozen=True)
class Split:
    dataset: str
    table: str
    columns: tuple[str, ...]
    domain_sql: str
    keys: tuple[str, ...]
    parts: tuple[Part, ...]
    aggregates: tuple[Aggregate, ...]
    outputs: tuple[Output, ...]
    final: exp.Select


def split(query: exp.Expr | str, *, dialect: str | None = None) -> Split:
    """The domain query and the final query of a federated aggregate (see the module)."""
    tree = parse(query, dialect=dialect or "duckdb") if isinstance(query, str) else query.copy()
    return _Splitter(tree).run()


def _where(node: exp.Expr) -> tuple[int | None, int | None]:
    """Where ``node`` starts in the analyst's text (a call: where its name starts)."""
    return _name_location(node) if isinstance(node, exp.Func) else location(node)


def _refuse(message: str, node: exp.Expr | None = None) -> NotSupportedError:
    line, col = _where(node) if node is not None else (None, None)
    if line is not None and col is not None:
        message = f"{message.rstrip('.')} (line {line}, column {col})"
    return NotSupportedError(message)


def _located(cls: type[SqlError], message: str, node: exp.Expr) -> SqlError:
    line, col = _where(node)
    return cls(message, line=line, col=col)


def norm(node: exp.Expr) -> str:
    """One spelling of an expression for comparisons: columns unqualified, lowercased.

    >>> norm(exp.maybe_parse("EXTRACT(year FROM f.D) + 1", dialect="duckdb"))
    'EXTRACT(YEAR FROM "d") + 1'
    """
    copy = node.copy()
    for column in list(copy.find_all(exp.Column)):
        for part in ("table", "db", "catalog"):
            column.set(part, None)
        column.set("this", exp.to_identifier(column.name.lower(), quoted=True))
    return copy.sql("duckdb", comments=False)


@functools.cache
def _duckdb_aggregates() -> frozenset[str]:
    """Names of DuckDB's aggregate functions (to spot ones sqlglot does not type)."""
    con = duckdb.connect(":memory:")
    try:
        rows = con.sql("SELECT DISTINCT function_name FROM duckdb_functions() "
                       "WHERE function_type = 'aggregate'").fetchall()
    finally:
        con.close()
    return frozenset(str(name).lower() for (name,) in rows)


def _is_aggregate(node: exp.Expr) -> bool:
    return isinstance(node, exp.AggFunc) or (
        isinstance(node, exp.Anonymous) and str(node.name).lower() in _duckdb_aggregates())


def _has_aggregate(node: exp.Expr) -> bool:
    return any(_is_aggregate(n) for n in node.walk())


def output_name(item: exp.Expr) -> str:
    """The column name DuckDB gives a select item.

    >>> output_name(exp.maybe_parse("COUNT(*)", dialect="duckdb"))
    'count_star()'
    >>> output_name(exp.maybe_parse("f.site", dialect="duckdb"))
    'site'
    """
    if isinstance(item, exp.Alias):
        return item.alias
    text = item.sql("duckdb", comments=False)
    try:
        return str(duckdb.SQLExpression(text).get_name())
    except duckdb.Error:
        return text


class _Splitter:
    def __init__(self, tree: exp.Expr) -> None:
        self.tree = tree
        self.keys: dict[str, str] = {}  # norm(key) -> __gN
        self.key_exprs: list[exp.Expr] = []
        self.parts: dict[tuple[str, str], Part] = {}
        self.aggregates: dict[tuple[str, str], Aggregate] = {}

    # -- the whole query ------------------------------------------------------------

    def run(self) -> Split:
        select = self._check_statement()
        table = self._federated_table(select)
        for node in select.walk():
            self._check_node(node, select)
        items = list(select.expressions)
        names = [output_name(item) for item in items]
        self._check_names(names)
        for key in self._group_keys(select, items):
            self.keys.setdefault(norm(key), f"__g{len(self.key_exprs)}")
            if len(self.keys) > len(self.key_exprs):
                self.key_exprs.append(key)
        if not any(_has_aggregate(item) for item in items) and not self.key_exprs:
            raise _refuse(
                "Federated queries must aggregate: this query returns rows, which are not "
                f"merged across domains. Select GROUP BY keys and aggregates ({MERGEABLE}).",
                items[0] if items else select)
        outputs: list[Output] = []
        for item, name in zip(items, names, strict=True):
            expr = self._rewrite(item.unalias(), "select", outputs)
            outputs.append(Output(name, expr))
        final = self._final(select, outputs)
        domain = self._domain_select(select, table)
        columns: dict[str, str] = {}
        for column in domain.find_all(exp.Column):
            columns.setdefault(column.name.lower(), column.name)
        return Split(
            dataset=table.db,
            table=table.name,
            columns=tuple(columns.values()),
            domain_sql=domain.sql("duckdb", comments=False),
            keys=tuple(self.keys.values()),
            parts=tuple(self.parts.values()),
            aggregates=tuple(self.aggregates.values()),
            outputs=tuple(outputs),
            final=final,
        )

    def _check_statement(self) -> exp.Select:
        tree = self.tree
        if isinstance(tree, exp.SetOperation):
            raise _refuse("UNION, INTERSECT and EXCEPT are not supported in federated queries; "
                          "send each SELECT on its own.", tree)
        if not isinstance(tree, exp.Select):
            raise RefusedStatementError("A federated query must be one SELECT statement over "
                                        "federated.DATASET.TABLE.")
        if tree.args.get("with_"):
            raise _refuse("WITH (common table expressions) is not supported in federated "
                          "queries; write one SELECT over federated.DATASET.TABLE.", tree)
        if tree.args.get("distinct"):
            raise _refuse("SELECT DISTINCT is not supported in federated queries; "
                          "GROUP BY the columns instead.", tree)
        if tree.args.get("joins") or tree.args.get("laterals"):
            raise _refuse("Federated queries read one table; joins are not supported. Join "
                          "inside one domain by naming it (DOMAIN.DATASET.TABLE).", tree)
        if tree.args.get("qualify") or tree.args.get("windows"):
            raise _refuse("Window functions and QUALIFY cannot be merged across domains; "
                          "federated queries compute one row per group.", tree)
        for name, value in tree.args.items():
            if value and name not in _CLAUSES:
                raise _refuse(f"{name.rstrip('_').upper()} is not supported in federated "
                              "queries.", tree)
        return tree

    def _federated_table(self, select: exp.Select) -> exp.Table:
        source = select.args.get("from_")
        table = source.this if isinstance(source, exp.From) else None
        if isinstance(table, exp.Subquery | exp.Select):
            raise _refuse("Subqueries are not supported in federated queries: every domain "
                          "answers one aggregate over federated.DATASET.TABLE.", table)
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
            raise InputError("A federated query reads one table, "
                             "FROM federated.DATASET.TABLE.")
        if table.catalog.lower() != FEDERATED or not table.db:
            raise InputError(f"A federated query reads federated.DATASET.TABLE, not "
                             f"'{table.sql('duckdb')}'.")
        for name, value in table.args.items():
            if value and name not in _TABLE_ARGS:
                raise _refuse(f"{name.upper()} on the table is not supported in federated "
                              "queries.", table)
        return table

    def _check_node(self, node: exp.Expr, select: exp.Select) -> None:
        if node is not select and isinstance(node, exp.Select | exp.Subquery | exp.SetOperation):
            raise _refuse("Subqueries are not supported in federated queries: every domain "
                          "answers one aggregate over federated.DATASET.TABLE.", node)
        if isinstance(node, exp.Window):
            raise _refuse("Window functions (… OVER …) cannot be merged across domains; "
                          "federated queries compute one row per group.", node.this)
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            raise _refuse(
                "Federated queries must aggregate: SELECT * returns rows, which are not merged "
                f"across domains. Select GROUP BY keys and aggregates ({MERGEABLE}).", node)
        if isinstance(node, exp.Filter):
            raise _refuse("Aggregates with FILTER (WHERE …) are not supported in federated "
                          "queries; put the condition in WHERE.", node)
        if _is_aggregate(node):
            self._check_aggregate(node)

    def _check_aggregate(self, node: exp.Expr) -> None:
        assert isinstance(node, exp.Func)
        name = function_name(node).upper()
        if any(isinstance(a, exp.Expr) and _has_aggregate(a) for a in node.iter_expressions()):
            raise _located(SqlError, f"{name} contains another aggregate", node)
        clause = _clause(node)
        if clause in ("where", "group"):
            raise _located(SqlError, f"Aggregates are not allowed in {clause.upper()}; "
                           "use HAVING", node)
        if isinstance(node, _ORDER_STATISTICS):
            raise _refuse(f"{name} cannot be merged across domains: medians, quantiles and "
                          "modes need every row in one place. Use AVG, MIN/MAX or COUNT(*) "
                          "with a WHERE range, or query one domain (DOMAIN.DATASET.TABLE).",
                          node)
        kind = _KINDS.get(type(node))
        if kind is None:
            raise _refuse(f"Aggregate {name} cannot be merged across domains. Federated "
                          f"queries support {MERGEABLE}.", node)
        if isinstance(node.this, exp.Distinct):
            raise _refuse(f"{name}(DISTINCT …) cannot be merged across domains: the same value "
                          "may occur in several domains and would be counted in each. Use "
                          f"{name} without DISTINCT, or query one domain "
                          "(DOMAIN.DATASET.TABLE).", node)
        extra = [k for k, v in node.args.items() if v and k not in ("this", "big_int")]
        if extra or (kind != "count" and node.this is None):
            raise _refuse(f"{name} takes one argument in a federated query.", node)
        if isinstance(node.this, exp.Star) and kind != "count":
            raise _refuse(f"{name}(*) is not an aggregate a federated query can merge.", node)

    def _check_names(self, names: list[str]) -> None:
        for name in names:
            if name.lower() == DOMAIN_COUNT:
                raise InputError(f"The output name '{name}' is taken: federated answers add a "
                                 f"'{DOMAIN_COUNT}' column per group; choose another alias.")
            if name.startswith("__"):
                raise InputError(f"Output names starting with '__' are reserved in federated "
                                 f"queries; rename '{name}'.")

    # -- GROUP BY -------------------------------------------------------------------

    def _group_keys(self, select: exp.Select, items: list[exp.Expr]) -> list[exp.Expr]:
        group = select.args.get("group")
        if group is None:
            return []
        if any(group.args.get(k) for k in ("grouping_sets", "cube", "rollup", "totals")) or any(
                isinstance(e, exp.Rollup | exp.Cube | exp.GroupingSets)
                for e in group.expressions):
            raise _refuse("ROLLUP, CUBE and GROUPING SETS are not supported in federated "
                          "queries; GROUP BY plain keys.", group)
        if group.args.get("all"):
            return [i.unalias() for i in items if not _has_aggregate(i) and i.find(exp.Column)]
        aliases = {i.alias.lower(): i.unalias() for i in items if isinstance(i, exp.Alias)}
        keys = []
        for key in group.expressions:
            if isinstance(key, exp.Literal) and not key.is_string:
                position = int(key.name) if key.name.isdigit() else 0
                if not 1 <= position <= len(items):
                    raise _located(SqlError, f"GROUP BY {key.name} is not a position in the "
                                   f"select list (1 to {len(items)})", key)
                key = items[position - 1].unalias()
            elif isinstance(key, exp.Column) and not key.table and key.name.lower() in aliases:
                # Read as the output alias (DuckDB would prefer a source column by that name).
                key = aliases[key.name.lower()]
            if _has_aggregate(key):
                raise _located(SqlError, "GROUP BY cannot name an aggregate", key)
            keys.append(key)
        # A key without a column (a constant) splits nothing; it stays in the select list.
        return [key for key in keys if key.find(exp.Column)]

    # -- rewriting for the final query ----------------------------------------------

    def _aggregate(self, node: exp.Func) -> Aggregate:
        kind = _KINDS[type(node)]
        arg = node.this if isinstance(node.this, exp.Expr) else None
        arg_key = "*" if arg is None or isinstance(arg, exp.Star) else norm(arg)
        found = self.aggregates.get((kind, arg_key))
        if found is not None:
            return found
        parts = []
        for part_kind in _NEEDS[kind]:
            part = self.parts.get((part_kind, arg_key))
            if part is None:
                inner = exp.Star() if arg_key == "*" else arg.copy()  # type: ignore[union-attr]
                part = Part(f"__p{len(self.parts)}", part_kind, arg_key,
                            _PART_FUNCS[part_kind](this=inner))
                self.parts[(part_kind, arg_key)] = part
            parts.append(part)
        aggregate = Aggregate(f"__a{len(self.aggregates)}", kind, arg_key, tuple(parts))
        self.aggregates[(kind, arg_key)] = aggregate
        return aggregate

    def _rewrite(self, node: exp.Expr, clause: str, outputs: list[Output]) -> exp.Expr:
        """``node`` over the merged columns: aggregates and keys replaced, aliases inlined.

        A bare name that is neither a key nor inside an aggregate may be an output alias
        (an earlier one in the select list, any in HAVING and ORDER BY), or, in HAVING and
        ORDER BY, the answer's ``domain_count``.
        """
        by_name = {o.name.lower(): o for o in outputs}

        def visit(sub: exp.Expr) -> exp.Expr:
            if _is_aggregate(sub):
                assert isinstance(sub, exp.Func)
                return exp.column(self._aggregate(sub).alias)
            matchable = isinstance(sub, exp.Condition) and not isinstance(sub, exp.Literal)
            key = self.keys.get(norm(sub)) if matchable else None
            if key is not None:
                return exp.column(key)
            if isinstance(sub, exp.Column):
                alias = by_name.get(sub.name.lower()) if not sub.table else None
                if alias is not None:
                    return exp.Paren(this=alias.expr.copy())
                if clause != "select" and not sub.table and sub.name.lower() == DOMAIN_COUNT:
                    return exp.column(DOMAIN_COUNT)  # HAVING domain_count = 3, ORDER BY it
                raise _refuse(
                    f"Federated queries must aggregate: column '{sub.sql('duckdb')}' is neither "
                    "a GROUP BY key nor inside an aggregate. Add it to GROUP BY or aggregate "
                    f"it ({MERGEABLE}).", sub)
            return sub

        rewritten = node.copy().transform(visit)
        for func in rewritten.find_all(exp.Func):
            if not is_allowed(func):
                name = function_name(func)
                raise _located(ForbiddenFunctionError,
                               f"Function '{name}' is not allowed in {clause.upper()}", func)
        return check_types(rewritten)  # the network's DuckDB knows built-in types only

    def _final(self, select: exp.Select, outputs: list[Output]) -> exp.Select:
        final = exp.Select().from_(MERGED)
        having = select.args.get("having")
        if having is not None:
            final.set("where", exp.Where(this=self._rewrite(having.this, "having", outputs)))
        order = []
        names = {o.name.lower(): i for i, o in enumerate(outputs, start=1)}
        original = select.args.get("order")
        for ordered in original.expressions if original is not None else []:
            this = ordered.this
            if isinstance(this, exp.Literal) and not this.is_string:
                if not this.name.isdigit() or not 1 <= int(this.name) <= len(outputs):
                    raise _located(SqlError, f"ORDER BY {this.name} is not a position in the "
                                   f"select list (1 to {len(outputs)})", this)
                target: exp.Expr = this.copy()
            elif (isinstance(this, exp.Column) and not this.table
                  and this.name.lower() in names):
                # An output name wins over a source column, as in DuckDB.
                target = exp.Literal.number(names[this.name.lower()])
            else:
                target = self._rewrite(this, "order by", outputs)
            ordered = ordered.copy()
            ordered.set("this", target)
            order.append(ordered)
        # Ties (and queries without ORDER BY) come in key order, so answers are repeatable.
        order += [exp.Ordered(this=exp.column(k), nulls_first=False) for k in self.keys.values()]
        if order:
            final.set("order", exp.Order(expressions=order))
        for clause in ("limit", "offset"):
            value = select.args.get(clause)
            if value is not None:
                final.set(clause, value.copy())
        # Every aggregate is known now (HAVING and ORDER BY may add some): the hidden
        # columns carry what the noise of dp parts is computed from (see federate_noise).
        hidden = [f"__s{i}" for i in range(len(self.parts))] + [
            a.alias for a in self.aggregates.values()] + [DOMAINS]
        final.set("expressions", [
            *(exp.alias_(o.expr.copy(), o.name, quoted=True) for o in outputs),
            exp.column(DOMAIN_COUNT), *(exp.column(h) for h in hidden)])
        return final

    # -- the domain query ------------------------------------------------------------

    def _domain_select(self, select: exp.Select, table: exp.Table) -> exp.Select:
        source = exp.Table(this=table.this.copy(), db=table.args["db"].copy())
        if table.args.get("alias") is not None:
            source.set("alias", table.args["alias"].copy())
        items = [exp.alias_(key.copy(), alias) for key, alias in zip(
            self.key_exprs, self.keys.values(), strict=True)]
        items += [exp.alias_(p.expr.copy(), p.alias) for p in self.parts.values()]
        domain = exp.Select(expressions=items).from_(source)
        where = select.args.get("where")
        if where is not None:
            domain.set("where", where.copy())
        if self.key_exprs:
            domain.set("group", exp.Group(expressions=[k.copy() for k in self.key_exprs]))
        for column in domain.find_all(exp.Column):
            column.set("catalog", None)
        return domain


def _clause(node: exp.Expr) -> str | None:
    while node.parent is not None and not isinstance(node.parent, exp.Select):
        node = node.parent
    return node.arg_key if node.parent is not None else None
