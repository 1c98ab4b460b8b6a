"""Flatten the nested SELECTs a dataframe library writes into one SELECT where possible.

Ibis compiles each step of a dataframe expression (filter, aggregate, order, limit)
into a SELECT over the previous one. The gateway reads such SQL in ``raw`` mode, but
``dp`` tables, ``aggregate`` tables and federated queries need one SELECT with
aggregates over the table. :func:`flatten` rewrites the nesting away with sqlglot:
qualify against the tables' schemas, merge derived tables (sqlglot's
``merge_subqueries``), then fold a plain outer SELECT over an aggregate into it
(its WHERE becomes HAVING; ORDER BY, LIMIT and OFFSET move inside).

>>> schema = {"oncology": {"screenings": {"site": "VARCHAR", "age": "INT"}}}
>>> print(flatten('SELECT * FROM (SELECT site, COUNT(*) AS n FROM oncology.screenings '
...       'WHERE age > 50 GROUP BY 1) AS t WHERE n > 10 ORDER BY site LIMIT 3', schema))
... # doctest: +NORMALIZE_WHITESPACE
SELECT "screenings"."site" AS "site", COUNT(*) AS "n"
FROM "oncology"."screenings" AS "screenings" WHERE "screenings"."age" > 50
GROUP BY "screenings"."site" HAVING COUNT(*) > 10 ORDER BY "site" LIMIT 3
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.merge_subqueries import merge_subqueries
from sqlglot.optimizer.qualify import qualify

DIALECT = "duckdb"

# What an outer SELECT may not have for it to be folded into the SELECT it reads.
_OUTER_BLOCKERS = ("joins", "group", "having", "distinct", "qualify", "windows", "laterals",
                   "pivots", "with")
# What the inner SELECT may not have: anything applied after its rows are made.
_INNER_BLOCKERS = ("order", "limit", "offset", "distinct", "qualify", "windows", "with")


def flatten(sql: str, schema: dict[str, Any], names: list[str] | None = None) -> str:
    """``sql`` (DuckDB) with its derived tables merged or folded away where possible.

    ``names`` are the output column names, restored after sqlglot normalised the
    identifiers' case (DuckDB's identifiers are case-insensitive, its output names
    are not).
    """
    tree = sqlglot.parse_one(sql, read=DIALECT)
    tree = qualify(tree, schema=schema, dialect=DIALECT, validate_qualify_columns=False)
    tree = merge_subqueries(tree)
    while isinstance(tree, exp.Select):
        folded = _fold(tree)
        if folded is None:
            break
        tree = folded
    first = tree
    while isinstance(first, exp.SetOperation):
        first = first.left
    if names is not None and isinstance(first, exp.Select) and len(first.expressions) == len(
            names) and not any(isinstance(p, exp.Star) for p in first.expressions):
        first.set("expressions", [exp.alias_(p.unalias(), name, quoted=True)
                                  for p, name in zip(first.expressions, names, strict=True)])
    return tree.sql(DIALECT)


def _is_aggregate(select: exp.Select) -> bool:
    return bool(select.args.get("group")) or any(
        p.find(exp.AggFunc) is not None for p in select.expressions)


def _fold(outer: exp.Select) -> exp.Select | None:
    """``outer`` folded into the aggregate SELECT it reads, or None when it cannot be."""
    source = outer.args.get("from_") or outer.args.get("from")
    if source is None or not isinstance(source.this, exp.Subquery):
        return None
    if any(outer.args.get(k) for k in _OUTER_BLOCKERS):
        return None
    if any(p.find(exp.AggFunc, exp.Window) is not None for p in outer.expressions):
        return None
    derived = source.this
    inner = derived.this
    if not isinstance(inner, exp.Select) or any(inner.args.get(k) for k in _INNER_BLOCKERS):
        return None
    if not _is_aggregate(inner) or inner.find(exp.Window) is not None:
        return None
    alias = derived.alias_or_name
    outputs = {p.alias_or_name: p.unalias() for p in inner.expressions}

    def substitute(node: exp.Expression) -> exp.Expression:
        def swap(n: exp.Expression) -> exp.Expression:
            if isinstance(n, exp.Column) and n.table == alias and n.name in outputs:
                replacement: exp.Expression = outputs[n.name].copy()
                return replacement
            return n
        return node.copy().transform(swap)

    for node in [*outer.expressions, *(outer.args.get("order") or exp.Order()).expressions]:
        for column in node.find_all(exp.Column):
            if column.table != alias or column.name not in outputs:
                return None  # reads something else: leave it as written
    projections = [exp.alias_(substitute(p.unalias()), p.alias_or_name, quoted=True)
                   for p in outer.expressions]
    names = {p.alias_or_name: p.this for p in projections}
    folded = inner.copy()
    folded.set("expressions", projections)
    where = outer.args.get("where")
    if where is not None:
        folded = folded.having(substitute(where.this), copy=False)
    order = outer.args.get("order")
    if order is not None:
        keys = []
        for ordered in order.expressions:
            key = ordered.this
            if (isinstance(key, exp.Column) and key.name in names
                    and names[key.name] == outputs.get(key.name)):
                ordered = ordered.copy()
                ordered.set("this", exp.column(key.name, quoted=True))
            else:
                ordered = substitute(ordered)
            keys.append(ordered)
        folded.set("order", exp.Order(expressions=keys))
    for key in ("limit", "offset"):
        if outer.args.get(key) is not None:
            folded.set(key, outer.args[key].copy())
    return folded
