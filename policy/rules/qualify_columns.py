"""Qualify every column against what the principal may see (invariant 3).

sqlglot's optimizer ``qualify`` expands stars (including DuckDB's ``* EXCLUDE``
and ``* REPLACE``) and qualifies columns against a schema that holds only the
*visible* columns, so a hidden column does not exist: naming it is an unknown
column, with suggestions taken from visible columns only. Every column is then
checked against its source, including columns the analyst qualified
themselves (``s.ssn``) and correlated references.

sqlglot leaves some columns as they are, and they are checked here too: an
unqualified column under ``HAVING``, ``QUALIFY`` or ``ORDER BY`` (it may name
an output of the block) must be an output name or a column of a source in
reach; a column qualified with the alias of the subquery it sits in (sqlglot
does that to a bare column of a FROM-less ``LATERAL``) is unknown.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope, walk_in_scope

from gateway.errors import UnknownColumnError, did_you_mean
from policy.access import visible_columns
from policy.locate import location
from policy.schema import Catalog, Schemas, access_for, columns_for, visible_schema


def _name_outputs(expression: exp.Expr) -> None:
    """Name unnamed computed outputs after their SQL text, as the analyst wrote it."""
    selects = [expression] if isinstance(expression, exp.Select) else []
    if isinstance(expression, exp.SetOperation):
        selects = [s for s in expression.find_all(exp.Select) if s.parent_select is None]
    for select in selects:
        for projection in list(select.expressions):
            if isinstance(projection, (exp.Alias, exp.Column, exp.Star)):
                continue
            name = projection.sql(dialect="duckdb")
            projection.replace(exp.alias_(projection.copy(), name, quoted=True))


def _source_columns(
    source: exp.Expr | Scope, catalog: Catalog, schemas: Schemas
) -> tuple[str, list[str]] | None:
    """(display name, columns) of a source, or None when it cannot be listed."""
    if isinstance(source, exp.Table) and source.db:
        access = access_for(catalog, source)
        return access.table, list(visible_columns(access, columns_for(schemas, access)))
    if isinstance(source, Scope) and isinstance(source.expression, exp.Query):
        names = source.expression.named_selects
        if "*" in names:
            return None
        alias = source.expression.parent
        label = alias.alias if isinstance(alias, (exp.CTE, exp.Subquery)) else "subquery"
        return label or "subquery", list(names)
    return None


def _find_source(scope: Scope, name: str) -> exp.Expr | Scope | None:
    current: Scope | None = scope
    while current is not None:
        if name in current.sources:
            found = current.sources[name]
            return found if isinstance(found, (exp.Expr, Scope)) else None
        current = current.parent
    return None


def _encloses(source: exp.Expr | Scope, node: exp.Expr) -> bool:
    """True when ``node`` sits inside the subquery ``source`` (a self-reference)."""
    if not isinstance(source, Scope):
        return False
    parent = node.parent
    while parent is not None:
        if parent is source.expression:
            return True
        parent = parent.parent
    return False


def _columns_in_reach(
    scope: Scope, catalog: Catalog, schemas: Schemas, node: exp.Expr
) -> list[tuple[str, list[str]]]:
    """(name, columns) of every listable source ``node`` in ``scope`` may read, outer ones too."""
    found: list[tuple[str, list[str]]] = []
    current: Scope | None = scope
    while current is not None:
        for source in current.sources.values():
            if not isinstance(source, (exp.Expr, Scope)) or _encloses(source, node):
                continue
            entry = _source_columns(source, catalog, schemas)
            if entry is not None:
                found.append(entry)
        current = current.parent
    return found


def _check_output_references(scope: Scope, catalog: Catalog, schemas: Schemas) -> None:
    """Unqualified columns under HAVING, QUALIFY and ORDER BY, which sqlglot leaves out.

    Each must be an output name of the block or a column some source in reach
    offers (a correlated reference); anything else, a hidden column included, is
    unknown.
    """
    query = scope.expression
    if not isinstance(query, exp.Query):
        return
    outputs = {name.lower() for name in query.named_selects}
    local = {alias.lower() for alias in scope.sources}
    for clause in ("having", "qualify", "order"):
        node = query.args.get(clause)
        if node is None:
            continue
        for column in walk_in_scope(node):
            if not isinstance(column, exp.Column) or column.table:
                continue
            if isinstance(column.this, exp.Star) or column.name.lower() in outputs:
                continue
            reach = _columns_in_reach(scope, catalog, schemas, column)
            if any(column.name.lower() in {c.lower() for c in cols} for _, cols in reach):
                continue
            if column.name.lower() in local:
                raise _whole_row(column.name, column)
            own = [
                entry
                for source in scope.sources.values()
                if isinstance(source, (exp.Expr, Scope))
                and (entry := _source_columns(source, catalog, schemas))
            ]
            raise _unknown(
                column.name,
                own[0][0] if len(own) == 1 else None,
                [c for _, cols in reach for c in cols],
                column,
            )


def _unknown(
    name: str, table: str | None, candidates: list[str], node: exp.Expr
) -> UnknownColumnError:
    line, col = location(node)
    where = f" in table '{table}'" if table else ""
    return UnknownColumnError(
        f"Unknown column '{name}'{where}.{did_you_mean(name, candidates)}", line=line, col=col
    )


def _whole_row(name: str, node: exp.Expr) -> UnknownColumnError:
    line, col = location(node)
    return UnknownColumnError(
        f"'{name}' is a table, not a column; a whole row cannot be used as a value, "
        "name the columns you need",
        line=line,
        col=col,
    )


def _check_excluded(expression: exp.Expr, catalog: Catalog, schemas: Schemas) -> None:
    """``* EXCLUDE (x)`` / ``* REPLACE (... AS x)`` must name a column that exists."""
    known = {node.alias.lower() for node in expression.find_all(exp.Alias) if node.alias}
    for access in catalog.values():
        if (access.dataset, access.table) in schemas:
            known |= {c.lower() for c in visible_columns(access, columns_for(schemas, access))}
    for star in expression.find_all(exp.Star):
        for column in star.args.get("except_") or []:
            if isinstance(column, exp.Column) and column.name.lower() not in known:
                raise _unknown(column.name, None, sorted(known), column)


def _validate(expression: exp.Expr, catalog: Catalog, schemas: Schemas) -> None:
    for node in expression.find_all(exp.TableColumn):
        raise _whole_row(node.name, node)
    for scope in traverse_scope(expression):
        if isinstance(scope.expression, (exp.Select, exp.SetOperation)):
            _check_output_references(scope, catalog, schemas)
        if not isinstance(scope.expression, exp.Select):
            continue
        listed = {
            alias: _source_columns(src, catalog, schemas) for alias, src in scope.sources.items()
        }
        everything = [c for entry in listed.values() if entry for c in entry[1]]
        for column in scope.unqualified_columns:
            if column.name in scope.sources or column.name.lower() in {
                s.lower() for s in scope.sources
            }:
                raise _whole_row(column.name, column)
            tables = [e[0] for e in listed.values() if e]
            raise _unknown(
                column.name, tables[0] if len(tables) == 1 else None, everything, column
            )
        for column in scope.columns:
            if not column.table or isinstance(column.this, exp.Star):
                continue
            source = _find_source(scope, column.table)
            if source is None:
                line, col = location(column)
                raise UnknownColumnError(
                    f"Unknown table or alias '{column.table}' in '{column.sql('duckdb')}'",
                    line=line,
                    col=col,
                )
            if _encloses(source, column):
                # ``LATERAL (SELECT ssn) AS x``: sqlglot gave the bare column the
                # alias of the very subquery it is in; no source offers it.
                reach = _columns_in_reach(scope, catalog, schemas, column)
                raise _unknown(column.name, None, [c for _, cols in reach for c in cols], column)
            entry = _source_columns(source, catalog, schemas)
            if entry is None:
                continue
            if column.name.lower() not in {c.lower() for c in entry[1]}:
                raise _unknown(column.name, entry[0], entry[1], column)


_OPTIMIZE_NAME = re.compile(r"(?:column|join)s?:?\s*'?([^'\s.]+)'?", re.IGNORECASE)


def qualify_columns(
    expression: exp.Expr, *, catalog: Catalog, schemas: Schemas, **_: object
) -> exp.Expr:
    """Qualify columns and expand stars; raise :class:`UnknownColumnError` for unknown ones."""
    _name_outputs(expression)
    _check_excluded(expression, catalog, schemas)
    schema = visible_schema(catalog, schemas)
    try:
        expression = qualify(
            expression,
            schema=schema,
            dialect="duckdb",
            validate_qualify_columns=False,
            quote_identifiers=False,
            identify=False,
            expand_stars=True,
        )
    except OptimizeError as err:
        match = _OPTIMIZE_NAME.search(str(err))
        name = match.group(1) if match else "?"
        everything = sorted(
            {c for a in catalog.values() for c in visible_columns(a, columns_for(schemas, a))}
            if all((a.dataset, a.table) in schemas for a in catalog.values())
            else set()
        )
        raise UnknownColumnError(
            f"Unknown column '{name}'.{did_you_mean(name, everything)}"
        ) from None
    _validate(expression, catalog, schemas)
    return expression
