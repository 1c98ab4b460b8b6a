"""Refuse joins on columns a table's ``join_keys`` do not list.

A table with ``join_keys: [patient_id]`` may be related to another relation
(another table, another reference to itself, a derived table, a CTE, a
``VALUES`` list, an ``UNNEST``) only by *equality* of those columns. The rule
runs on the qualified AST, so every column is known by the relation it comes
from, and follows values through derived tables, CTEs, set operations and
subqueries (``lineage``) down to the protected table they were read from.

What counts as relating two relations: any expression that mixes values of two
relation references and

- is a condition (``ON``, ``USING`` and ``NATURAL`` after qualification,
  ``WHERE``, ``HAVING``, ``QUALIFY``, ``FILTER``, ``CASE WHEN``), or a ``GROUP
  BY``, ``ORDER BY``, ``DISTINCT ON`` or window key, split on ``AND``/``OR``/``NOT``;
- or is a comparison or a function call anywhere (``list_contains``,
  ``levenshtein`` ... compare values too);
- or is a column of ``INTERSECT``/``EXCEPT`` (they compare whole rows).

Such an expression is allowed only when it is an equality (``=``, ``IN``,
``IS NOT DISTINCT FROM``) and the restricted table's part of it uses only its
join keys. Arithmetic, ``||``, ``COALESCE``, ``CASE`` and ``SUM``/``AVG``/
``COUNT``/``MIN``/``MAX`` may mix values (``SUM(i.amount * r.price)``): their
results are checked again wherever they are compared. ``POSITIONAL JOIN``
(rows paired by position) with a restricted table is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.scope import Scope, traverse_scope, walk_in_scope

from gateway.errors import RefusedStatementError, SqlError
from policy.locate import location
from policy.model import Policy
from policy.schema import Catalog

Instance = tuple[object, ...]

#: Expressions that may combine values of two relations (see the module doc).
SAFE_COMBINERS: tuple[type[exp.Expr], ...] = (
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Neg, exp.Paren,
    exp.DPipe, exp.Concat, exp.ConcatWs, exp.Coalesce, exp.Case, exp.If, exp.Cast,
    exp.TryCast, exp.Alias, exp.Sum, exp.Avg, exp.Count, exp.Min, exp.Max,
)  # fmt: skip

#: Comparisons that are equalities (a key may be matched with these).
EQUALITIES: tuple[type[exp.Expr], ...] = (exp.EQ, exp.In, exp.NullSafeEQ)

_CONNECTIVES = (exp.And, exp.Or, exp.Not, exp.Paren, exp.Xor)


@dataclass(frozen=True)
class Ref:
    """A value read from one relation reference: ``table``/``column`` when restricted."""

    instance: Instance
    table: str | None = None
    column: str | None = None


class _Lineage:
    """Which relation references (and restricted columns) an expression reads."""

    def __init__(self, scopes: list[Scope], restricted: Mapping[tuple[str, str], str]) -> None:
        self.by_expression = {id(s.expression): s for s in scopes}
        self.restricted = restricted
        self._outputs: dict[tuple[int, str], frozenset[Ref]] = {}
        self._busy: set[tuple[int, str]] = set()

    def refs(self, node: exp.Expr, scope: Scope) -> frozenset[Ref]:
        if isinstance(node, exp.Column):
            return self.column(node, scope)
        nested = self.by_expression.get(id(node))
        if nested is not None and nested is not scope:
            return self.all_outputs(nested)
        out: set[Ref] = set()
        for child in node.iter_expressions():
            out |= self.refs(child, scope)
        return frozenset(out)

    def column(self, column: exp.Column, scope: Scope) -> frozenset[Ref]:
        if not column.table:
            # An output alias (ORDER BY n) or something qualify left alone.
            select = scope.expression
            if isinstance(select, exp.Select):
                for projection in select.expressions:
                    same = projection.alias_or_name.lower() == column.name.lower()
                    if same and projection is not column:
                        inner = projection.this if isinstance(projection, exp.Alias) else None
                        if inner is not None:
                            return self.refs(inner, scope)
            return frozenset({Ref(("?", id(scope), column.name))})
        found_scope, source = _find_source(scope, column.table)
        key: Instance = (id(found_scope), column.table)
        if source is None:
            return frozenset({Ref(key)})
        if isinstance(source, exp.Table):
            name = self.restricted.get((source.db.lower(), source.name.lower()))
            if name is None:
                return frozenset({Ref(key)})
            return frozenset({Ref(key, name, column.name.lower())})
        if isinstance(source, Scope):
            if source.is_udtf:
                # UNNEST(a.x) and friends: what they read, in the scope using them.
                assert found_scope is not None
                inner_refs = self.refs(source.expression, found_scope)
                return frozenset({Ref(key), *inner_refs})
            inner = self.outputs(source, column.name)
            if not inner:
                return frozenset({Ref(key)})
            return frozenset(Ref(key + r.instance, r.table, r.column) for r in inner)
        return frozenset({Ref(key)})

    def _selects(self, scope: Scope) -> Iterator[tuple[Scope, exp.Select]]:
        """The leaf SELECTs of a scope (one, or every branch of a set operation)."""
        stack: list[exp.Expr] = [scope.expression]
        while stack:
            node = stack.pop()
            if isinstance(node, exp.SetOperation):
                stack.extend([node.this, node.expression])
            elif isinstance(node, exp.Subquery):
                stack.append(node.this)
            elif isinstance(node, exp.Select):
                leaf = self.by_expression.get(id(node), scope)
                yield leaf, node

    def outputs(self, scope: Scope, name: str) -> frozenset[Ref]:
        """What the output column ``name`` of ``scope`` reads."""
        key = (id(scope), name.lower())
        if key in self._outputs:
            return self._outputs[key]
        if key in self._busy:  # a recursive CTE reading itself
            return frozenset()
        self._busy.add(key)
        out: set[Ref] = set()
        expression = scope.expression
        position = None
        if isinstance(expression, exp.Query):
            names = [n.lower() for n in expression.named_selects]
            position = names.index(name.lower()) if name.lower() in names else None
        for leaf, select in self._selects(scope):
            projections = select.expressions
            if position is not None and position < len(projections):
                out |= self.refs(projections[position], leaf)
            else:
                for projection in projections:
                    out |= self.refs(projection, leaf)
        if not isinstance(expression, exp.Query):  # VALUES and other table sources
            out |= self.refs(expression, scope)
        self._busy.discard(key)
        result = frozenset(out)
        self._outputs[key] = result
        return result

    def all_outputs(self, scope: Scope) -> frozenset[Ref]:
        out: set[Ref] = set()
        expression = scope.expression
        names = expression.named_selects if isinstance(expression, exp.Query) else []
        for name in names or ["*"]:
            out |= self.outputs(scope, name)
        return frozenset(out)


def _find_source(
    scope: Scope, name: str
) -> tuple[Scope | None, exp.Table | Scope | None]:
    current: Scope | None = scope
    while current is not None:
        for alias, source in current.sources.items():
            if alias.lower() == name.lower():
                if isinstance(source, (exp.Table, Scope)):
                    return current, source
                return current, None
        current = current.parent
    return None, None


def _atoms(node: exp.Expr) -> Iterator[exp.Expr]:
    """The conditions joined by AND / OR / NOT / parentheses."""
    if isinstance(node, _CONNECTIVES):
        for child in node.iter_expressions():
            yield from _atoms(child)
    else:
        yield node


def _roots(select: exp.Select) -> Iterator[exp.Expr]:
    """The conditions and keys of one SELECT (not its subqueries' ones)."""
    for join in select.args.get("joins") or []:
        if join.args.get("on") is not None:
            yield join.args["on"]
        yield from join.args.get("using") or []
    for key in ("where", "having", "qualify"):
        clause = select.args.get(key)
        if clause is not None:
            yield clause.this
    group = select.args.get("group")
    if group is not None:
        yield from group.expressions
    order = select.args.get("order")
    if order is not None:
        yield from (o.this for o in order.expressions)
    distinct = select.args.get("distinct")
    if distinct is not None and distinct.args.get("on") is not None:
        yield distinct.args["on"]
    for node in walk_in_scope(select):
        if isinstance(node, exp.Window):
            yield from node.args.get("partition_by") or []
            order = node.args.get("order")
            if order is not None:
                yield from (o.this for o in order.expressions)
        elif isinstance(node, exp.Filter):
            condition = node.expression
            yield condition.this if isinstance(condition, exp.Where) else condition
        elif isinstance(node, exp.If):
            yield node.this


class _Checker:
    def __init__(
        self, lineage: _Lineage, keys: Mapping[str, tuple[str, ...]]
    ) -> None:
        self.lineage = lineage
        self.keys = keys

    def check(self, node: exp.Expr, scope: Scope, *, what: exp.Expr | None = None) -> None:
        refs = self.lineage.refs(node, scope)
        if len({r.instance for r in refs}) < 2:
            return
        restricted = [r for r in refs if r.table is not None]
        if not restricted:
            return
        is_equality = isinstance(node, EQUALITIES)
        for ref in sorted(restricted, key=lambda r: (r.table or "", r.column or "")):
            assert ref.table is not None
            keys = self.keys[ref.table]
            if is_equality and ref.column in {k.lower() for k in keys}:
                continue
            raise _refusal(ref, keys, what or node, equality=is_equality)

    def scope(self, scope: Scope) -> None:
        expression = scope.expression
        if isinstance(expression, (exp.Intersect, exp.Except)):
            for name in expression.named_selects:
                refs = self.lineage.outputs(scope, name)
                probe = exp.column(name)
                if len({r.instance for r in refs}) >= 2:
                    for ref in refs:
                        if ref.table is not None:
                            raise _refusal(ref, self.keys[ref.table], probe, equality=False,
                                           how="INTERSECT/EXCEPT compares whole rows")
        if not isinstance(expression, exp.Select):
            return
        for join in expression.args.get("joins") or []:
            if str(join.args.get("method") or "").upper() == "POSITIONAL":
                refs = self.lineage.refs(expression, scope)
                for ref in refs:
                    if ref.table is not None:
                        raise _refusal(ref, self.keys[ref.table], join, equality=False,
                                       how="POSITIONAL JOIN pairs rows by position")
        for root in _roots(expression):
            for atom in _atoms(root):
                self.check(atom, scope)
        for node in walk_in_scope(expression):
            if isinstance(node, _CONNECTIVES):
                continue  # split into atoms above
            if isinstance(node, exp.Predicate) or (
                isinstance(node, exp.Func) and not isinstance(node, SAFE_COMBINERS)
            ):
                self.check(node, scope)


def _refusal(
    ref: Ref,
    keys: tuple[str, ...],
    node: exp.Expr,
    *,
    equality: bool,
    how: str | None = None,
) -> SqlError:
    line, col = location(node)
    text = node.sql(dialect="duckdb")
    if len(text) > 80:
        text = text[:77] + "..."
    if not keys:
        rule = f"Table '{ref.table}' may not be joined to other relations (it has no join keys)"
    else:
        rule = (
            f"Table '{ref.table}' may only be joined on its join keys "
            f"({', '.join(keys)}), compared with '='"
        )
    if how is not None:
        reason = how
    elif ref.column in {k.lower() for k in keys} and not equality:
        reason = f"'{text}' relates its column '{ref.column}' to another relation without '='"
    else:
        reason = f"'{text}' relates its column '{ref.column}' to another relation"
    return SqlError(f"{rule}; {reason}", line=line, col=col)


def check_joins(
    expression: exp.Expr, *, policy: Policy, catalog: Catalog, **_: object
) -> exp.Expr:
    """Raise :class:`SqlError` when a join condition uses a column that is not a join key.

    >>> import sqlglot
    >>> from policy.access import TableAccess
    >>> from policy.model import Dataset, Domain, Policy, Source, Table
    >>> t = Table("t", Source("csv", "/t.csv"), join_keys=("pid",))
    >>> policy = Policy(Domain("d"), {"s": Dataset("s", {"t": t})}, {})
    >>> catalog = {("s", "t"): TableAccess("s", "t", "raw")}
    >>> q = "SELECT a.zip FROM s.t AS a JOIN s.t AS b ON a.pid = b.pid"
    >>> _ = check_joins(sqlglot.parse_one(q), policy=policy, catalog=catalog)
    >>> q = "SELECT a.zip FROM s.t AS a, s.t AS b WHERE a.zip = b.zip"
    >>> check_joins(sqlglot.parse_one(q), policy=policy, catalog=catalog)
    Traceback (most recent call last):
    ...
    gateway.errors.SqlError: Table 's.t' may only be joined on its join keys (pid), compared with '='; 'a.zip = b.zip' relates its column 'zip' to another relation (line 1, column 46)
    """  # noqa: E501
    restricted: dict[tuple[str, str], str] = {}
    keys: dict[str, tuple[str, ...]] = {}
    for dataset, table in catalog:
        found = policy.datasets[dataset].tables[table]
        if found.join_keys is not None:
            name = f"{dataset}.{table}"
            restricted[(dataset.lower(), table.lower())] = name
            keys[name] = found.join_keys
    if not restricted:
        return expression
    try:
        scopes = traverse_scope(expression)
    except OptimizeError as err:
        raise RefusedStatementError(f"Cannot analyse this query: {err}") from None
    checker = _Checker(_Lineage(scopes, restricted), keys)
    for scope in scopes:
        checker.scope(scope)
    return expression
