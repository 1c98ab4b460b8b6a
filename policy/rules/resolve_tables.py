"""Resolve every table reference against the principal's catalog (invariants 2 and 3).

A protected table comes out canonical: ``db`` is the dataset, ``this`` the
table, no catalog, and an alias (the name the analyst used when they gave
none). CTE references stay as they are; every other ``exp.Table`` (unknown,
denied, system tables, file paths, table functions) is refused with the same
"not found" message.

A table in parentheses (``FROM (people)``) loses them first, and two FROM
items of one block may not share a name (``FROM people, people``).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.scope import Scope, traverse_scope

from gateway.errors import NotSupportedError, RefusedStatementError, SqlError, TableNotFoundError
from policy.functions import function_name
from policy.locate import location
from policy.model import Policy
from policy.schema import Catalog

# Table arguments that change what is read (time travel, partitions, ...).
_PLAIN_TABLE_ARGS = frozenset({"this", "db", "catalog", "alias"})


def cte_references(expression: exp.Expr) -> set[int]:
    """``id()`` of every ``exp.Table`` that names a CTE in its SQL scope."""
    refs: set[int] = set()
    try:
        scopes = traverse_scope(expression)
    except OptimizeError as err:
        raise RefusedStatementError(f"Cannot analyse this query: {err}") from None
    for scope in scopes:
        for table in scope.tables:
            if table.args.get("db") or table.args.get("catalog"):
                continue
            if not isinstance(table.this, exp.Identifier):
                continue
            source = scope.sources.get(table.alias_or_name)
            if not isinstance(source, Scope):
                continue
            cte = source.expression.parent
            if isinstance(cte, exp.CTE) and cte.alias.lower() == table.name.lower():
                refs.add(id(table))
    return refs


def _unwrap_parentheses(expression: exp.Expr) -> None:
    """``FROM (people)`` and ``FROM ((people)) AS p`` become plain table references.

    Left alone, the rewrite would put the policy subquery inside the parentheses,
    which DuckDB does not parse.
    """
    for table in list(expression.find_all(exp.Table)):
        while isinstance(table.parent, exp.Subquery) and table.arg_key == "this":
            wrapper = table.parent
            if any(v for k, v in wrapper.args.items() if k not in ("this", "alias")):
                break
            if table.args.get("joins"):
                break
            alias = wrapper.args.get("alias")
            if alias is not None:
                if table.args.get("alias") is not None or alias.columns:
                    break
                table.set("alias", alias)
            wrapper.replace(table)


def _from_items(select: exp.Select) -> list[exp.Expr]:
    from_ = select.args.get("from_")
    items = [from_.this] if isinstance(from_, exp.From) else []
    return items + [join.this for join in select.args.get("joins") or []]


def _check_distinct_names(expression: exp.Expr) -> None:
    """Each FROM item of a block needs its own name, as DuckDB requires."""
    for select in expression.find_all(exp.Select):
        seen: set[str] = set()
        for item in _from_items(select):
            name = item.alias_or_name
            if not name:
                continue
            if name.lower() not in seen:
                seen.add(name.lower())
                continue
            line, col = location(item)
            if isinstance(item, exp.Table) and not item.alias:
                raise SqlError(
                    f"Table '{name}' appears twice in FROM; give each an alias "
                    f"({name} AS a, {name} AS b)",
                    line=line,
                    col=col,
                )
            raise SqlError(
                f"Alias '{name}' is used twice in FROM; give each table its own alias",
                line=line,
                col=col,
            )


def _display(table: exp.Table) -> str:
    if not isinstance(table.this, exp.Identifier):
        func = table.this
        name = function_name(func) if isinstance(func, exp.Func) else func.key
        return f"{name}(…)"
    return ".".join(p.name for p in table.parts)


def resolve_tables(
    expression: exp.Expr, *, policy: Policy, catalog: Catalog, **_: object
) -> exp.Expr:
    """Make every table reference canonical or raise :class:`TableNotFoundError`."""
    _unwrap_parentheses(expression)
    _check_distinct_names(expression)
    ctes = cte_references(expression)
    by_name: dict[str, list[tuple[str, str]]] = {}
    for dataset, name in catalog:
        by_name.setdefault(name.lower(), []).append((dataset, name))
    visible = [f"{d}.{t}" for d, t in catalog] + [t for d, t in catalog]
    domain = policy.domain.name.lower()

    for table in list(expression.find_all(exp.Table)):
        if id(table) in ctes:
            continue
        line, col = location(table)
        name = _display(table)
        if not isinstance(table.this, exp.Identifier) or not all(
            isinstance(p, exp.Identifier) for p in table.parts
        ):
            raise TableNotFoundError(name, candidates=visible, line=line, col=col)
        parts = [p.name.lower() for p in table.parts]
        found: tuple[str, str] | None = None
        if len(parts) == 1:
            matches = by_name.get(parts[0], [])
            if len(matches) > 1:
                options = ", ".join(f"{d}.{t}" for d, t in matches)
                raise SqlError(
                    f"Table '{name}' is in several datasets; write one of {options}",
                    line=line,
                    col=col,
                )
            found = matches[0] if matches else None
        elif len(parts) in (2, 3) and (len(parts) == 2 or parts[0] == domain):
            for dataset, t in by_name.get(parts[-1], []):
                if dataset.lower() == parts[-2]:
                    found = (dataset, t)
        if found is None:
            raise TableNotFoundError(name, candidates=visible, line=line, col=col)
        extra = sorted(k for k, v in table.args.items() if v and k not in _PLAIN_TABLE_ARGS)
        if extra == ["joins"]:
            raise NotSupportedError(
                "Joins in parentheses are not supported; write them without the "
                "parentheses (FROM a JOIN b ON …) or as a subquery (SELECT … FROM a JOIN b …)"
            )
        if extra:
            raise NotSupportedError(
                f"Table '{name}': {', '.join(extra)} is not supported on protected tables"
            )
        alias = table.args.get("alias")
        if alias is None:
            alias = exp.TableAlias(this=exp.to_identifier(table.name))
        table.set("catalog", None)
        table.set("db", exp.to_identifier(found[0]))
        table.set("this", exp.to_identifier(found[1]))
        table.set("alias", alias)

    # ``dataset.table.column`` and ``domain.dataset.table.column``: the table part
    # already names the alias given above.
    for column in expression.find_all(exp.Column):
        if column.args.get("db") is not None:
            column.set("db", None)
            column.set("catalog", None)
    return expression
