"""Qualify every column against what the principal may see (invariant 3).

sqlglot's optimizer ``qualify`` expands stars (including DuckDB's ``* EXCLUDE``
and ``* REPLACE``) and qualifies columns against a schema that holds only the
*visible* columns, so a hidden column does not exist: naming it is an unknown
column, with suggestions taken from visible columns only. Every column is then
checked against its source, including columns the analyst qualified
themselves (``s.ssn``) and correlated references.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

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
