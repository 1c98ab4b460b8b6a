"""Replace every protected table by a subquery that enforces its policy.

``FROM oncology.screenings AS s`` becomes::

    FROM (SELECT <visible columns, masks applied> FROM "oncology"."screenings"
          WHERE (<table filter>) AND (<grant filter>)) AS s

``"oncology"."screenings"`` is the physical view the engine creates. Filters
and masks may use hidden columns; ``{user.ATTR}`` placeholders are bound as
typed literals.

An ``aggregate``-mode table also exposes its privacy unit, under
:data:`policy.rules.enforce_aggregate.UNIT_ALIAS`, to the block that counts it;
only tables :func:`policy.rules.enforce_aggregate.enforce_aggregate` has checked
may be read in that mode.
"""

from __future__ import annotations

from sqlglot import exp

from gateway.errors import PolicyError, StockadeError
from policy.access import TableAccess, visible_columns
from policy.expressions import bind_attributes, parse_fragment
from policy.principal import Principal
from policy.rules.enforce_aggregate import UNIT_ALIAS, UNIT_META
from policy.schema import Catalog, Schemas, access_for, columns_for


def _fragment(
    text: str, what: str, access: TableAccess, columns: list[str], principal: Principal
) -> exp.Expr:
    """Parse, check and bind one filter or mask of ``access``'s table."""
    parsed = parse_fragment(text)
    known = {c.lower(): c for c in columns}
    for column in parsed.find_all(exp.Column):
        if column.name.lower() not in known or column.table:
            # Never fall through to an outer query's column: the policy is wrong.
            raise PolicyError(
                f"The {what} of table '{access.qualified_name}' uses unknown column "
                f"'{column.sql('duckdb')}'; check the policy against the source schema",
                where=f"datasets.{access.dataset}.tables.{access.table}",
            )
        column.set("table", exp.to_identifier(access.table, quoted=True))
        column.set("this", exp.to_identifier(known[column.name.lower()], quoted=True))
    return bind_attributes(parsed, principal)


def policy_subquery(
    access: TableAccess, source: list[str], visible: list[str], principal: Principal
) -> exp.Select:
    """The ``SELECT`` that exposes ``access``'s table to one principal."""
    masks = {c.lower(): m for c, m in access.masks.items()}
    projections: list[exp.Expr] = []
    for name in visible:
        mask = masks.get(name.lower())
        if mask is None:
            projections.append(exp.column(name, table=access.table, quoted=True))
        else:
            value = _fragment(mask, f"mask of column '{name}'", access, source, principal)
            projections.append(exp.alias_(value, name, quoted=True))
    select = exp.select(*projections).from_(
        exp.table_(access.table, db=access.dataset, quoted=True)
    )
    filters = [
        exp.paren(_fragment(f, "row_filter", access, source, principal), copy=False)
        for f in access.row_filters
    ]
    if filters:
        select = select.where(exp.and_(*filters, copy=False), copy=False)
    return select


def _with_unit(select: exp.Select, access: TableAccess, source: list[str]) -> exp.Select:
    """``select`` also exposing the table's privacy unit as :data:`UNIT_ALIAS`."""
    known = {c.lower(): c for c in source}
    unit = known.get((access.privacy_unit or "").lower())
    if unit is None:
        raise PolicyError(
            f"The privacy_unit of table '{access.qualified_name}' is not a column of its "
            "source; check the policy against the source schema",
            where=f"datasets.{access.dataset}.tables.{access.table}",
        )
    if UNIT_ALIAS in known:
        raise PolicyError(
            f"Table '{access.qualified_name}' has a column named '{UNIT_ALIAS}', a name "
            "reserved by the gateway; rename it in the source",
            where=f"datasets.{access.dataset}.tables.{access.table}",
        )
    column = exp.column(unit, table=access.table, quoted=True)
    return select.select(exp.alias_(column, UNIT_ALIAS, quoted=True), copy=False)


def apply_table_policy(
    expression: exp.Expr,
    *,
    principal: Principal,
    catalog: Catalog,
    schemas: Schemas,
    **_: object,
) -> exp.Expr:
    """Wrap every protected table (any depth) in its policy subquery."""
    for table in list(expression.find_all(exp.Table)):
        if not table.db:
            continue
        access = access_for(catalog, table)
        source = list(columns_for(schemas, access))
        visible = list(visible_columns(access, columns_for(schemas, access)))
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
        select = policy_subquery(access, source, visible, principal)
        if access.mode == "aggregate":
            if not table.meta.get(UNIT_META):
                raise StockadeError(
                    f"Table '{access.qualified_name}' reached the rewrite without its "
                    "aggregate-mode check"
                )
            select = _with_unit(select, access, source)
        subquery = exp.Subquery(this=select, alias=alias.copy())
        table.replace(subquery)
    return expression
