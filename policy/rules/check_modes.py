"""Refuse tables whose access mode this gateway cannot serve yet."""

from __future__ import annotations

from sqlglot import exp

from gateway.errors import NotSupportedError
from policy.schema import Catalog, access_for

#: Modes the rules enforce: ``raw`` by :func:`policy.rules.apply_table_policy.apply_table_policy`,
#: ``aggregate`` by :func:`policy.rules.enforce_aggregate.enforce_aggregate` with it.
SUPPORTED_MODES = frozenset({"raw", "aggregate"})


def check_modes(expression: exp.Expr, *, catalog: Catalog, **_: object) -> exp.Expr:
    """Raise :class:`NotSupportedError` for a table in a mode not built yet."""
    for table in expression.find_all(exp.Table):
        if not table.db:
            continue
        access = access_for(catalog, table)
        if access.mode not in SUPPORTED_MODES:
            raise NotSupportedError(
                f"Table '{access.qualified_name}' is in '{access.mode}' mode for your role; "
                f"{access.mode} access is not supported yet by this gateway."
            )
    return expression
