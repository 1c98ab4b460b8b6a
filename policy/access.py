"""Which tables a principal may use, and how: the access decision as data.

>>> from policy.loader import parse_policy
>>> from policy.principal import Principal
>>> policy = parse_policy('''
... version: 1
... domain: {name: d}
... datasets:
...   s:
...     tables:
...       t:
...         source: {format: csv, path: t.csv}
...         row_filter: "ok"
...         columns: {pid: {hidden: true}}
... roles:
...   reader: {datasets: {s: {mode: raw, row_filter: "site = {user.site}"}}}
...   nobody: {}
... ''', base_dir="/")
>>> a = table_access(policy, Principal("u", "reader", {"site": "x"}), "s", "t")
>>> a.mode, a.row_filters, sorted(a.hidden)
('raw', ('ok', 'site = {user.site}'), ['pid'])
>>> table_access(policy, Principal("u", "nobody"), "s", "t") is None
True
>>> visible_columns(a, {"pid": "INTEGER", "site": "VARCHAR", "ok": "BOOLEAN"})
{'site': 'VARCHAR', 'ok': 'BOOLEAN'}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from policy.model import Budget, ColumnPolicy, DatasetGrant, Policy
from policy.principal import Principal

#: The grant an admin role gets for a dataset it does not list.
ADMIN_GRANT = DatasetGrant(mode="raw")


@dataclass(frozen=True)
class TableAccess:
    """How one principal may use one table (never ``deny``: denied is ``None``).

    ``hidden`` holds lowercased column names (SQL names are case-insensitive);
    ``masks`` maps a column name to its mask expression text.
    """

    dataset: str
    table: str
    mode: str
    row_filters: tuple[str, ...] = ()
    hidden: frozenset[str] = frozenset()
    masks: Mapping[str, str] = field(default_factory=dict)
    min_group_size: int | None = None
    privacy_unit: str | None = None
    max_rows_per_unit: int | None = None
    epsilon_per_query: float | None = None
    budget: Budget | None = None
    columns: Mapping[str, ColumnPolicy] = field(default_factory=dict)
    public_keys: Mapping[str, tuple[str | int | float | bool, ...]] = field(
        default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "masks", MappingProxyType(dict(self.masks)))
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        object.__setattr__(self, "public_keys", MappingProxyType(dict(self.public_keys)))

    @property
    def qualified_name(self) -> str:
        return f"{self.dataset}.{self.table}"

    def is_hidden(self, column: str) -> bool:
        return column.lower() in self.hidden


def dataset_grant(policy: Policy, principal: Principal, dataset: str) -> DatasetGrant | None:
    """The grant that applies to ``dataset`` for the principal's role, if any."""
    role = policy.roles.get(principal.role)
    if role is None or dataset not in policy.datasets:
        return None
    grant = role.datasets.get(dataset)
    if grant is None and role.admin:
        return ADMIN_GRANT
    return grant


def table_access(
    policy: Policy, principal: Principal, dataset: str, table: str
) -> TableAccess | None:
    """The principal's access to ``dataset.table``, or ``None`` when denied.

    Unknown roles, datasets and tables are denied. Table-level ``row_filter``,
    ``hidden: true`` and ``mask`` apply to every role, admins included.
    """
    grant = dataset_grant(policy, principal, dataset)
    if grant is None:
        return None
    found = policy.datasets[dataset].tables.get(table)
    if found is None:
        return None
    table_grant = grant.tables.get(table)
    mode = (table_grant.mode if table_grant else None) or grant.mode
    if mode == "deny":
        return None
    filters = tuple(
        f
        for f in (
            found.row_filter,
            grant.row_filter,
            table_grant.row_filter if table_grant else None,
        )
        if f
    )
    hidden = {c.lower() for c, cp in found.columns.items() if cp.hidden}
    if table_grant:
        hidden |= {c.lower() for c in table_grant.hidden}
    masks = {c: cp.mask for c, cp in found.columns.items() if cp.mask is not None}
    min_group = (table_grant.min_group_size if table_grant else None) or grant.min_group_size
    return TableAccess(
        dataset=dataset,
        table=table,
        mode=mode,
        row_filters=filters,
        hidden=frozenset(hidden),
        masks=masks,
        min_group_size=min_group,
        privacy_unit=found.privacy_unit,
        max_rows_per_unit=found.max_rows_per_unit,
        epsilon_per_query=grant.epsilon_per_query,
        budget=grant.budget,
        columns=found.columns,
        public_keys=found.public_keys,
    )


def dp_units(policy: Policy) -> dict[tuple[str, str], tuple[str, int]]:
    """``(privacy unit, max rows per unit)`` of every table some role reads in ``dp`` mode.

    A table counts when any role's grant on its dataset (or that grant's override
    for the table) is ``dp`` and the table has a ``privacy_unit``; the engine keeps
    a bounded sample of those (:mod:`gateway.snapshots`).

    >>> from policy.loader import parse_policy
    >>> p = parse_policy('''
    ... version: 1
    ... domain: {name: d}
    ... datasets:
    ...   s:
    ...     tables:
    ...       a: {source: {format: csv, path: a.csv}, privacy_unit: pid, max_rows_per_unit: 3}
    ...       b: {source: {format: csv, path: b.csv}, privacy_unit: pid}
    ...       c: {source: {format: csv, path: c.csv}}
    ... roles:
    ...   r: {datasets: {s: {mode: raw, epsilon_per_query: 0.1, budget: {epsilon: 1},
    ...                      tables: {a: {mode: dp}}}}}
    ...   q: {datasets: {s: {mode: raw}}}
    ... ''', base_dir="/")
    >>> dp_units(p)
    {('s', 'a'): ('pid', 3)}
    """
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for role in policy.roles.values():
        for ds_name, grant in role.datasets.items():
            dataset = policy.datasets.get(ds_name)
            if dataset is None:
                continue
            for t_name, table in dataset.tables.items():
                table_grant = grant.tables.get(t_name)
                mode = (table_grant.mode if table_grant else None) or grant.mode
                if mode == "dp" and table.privacy_unit:
                    out[(ds_name, t_name)] = (table.privacy_unit, table.max_rows_per_unit or 1)
    return out


def catalog_for(policy: Policy, principal: Principal) -> dict[tuple[str, str], TableAccess]:
    """Every table the principal may use, keyed by ``(dataset, table)``."""
    catalog: dict[tuple[str, str], TableAccess] = {}
    for ds_name, dataset in policy.datasets.items():
        for t_name in dataset.tables:
            access = table_access(policy, principal, ds_name, t_name)
            if access is not None:
                catalog[(ds_name, t_name)] = access
    return catalog


def visible_columns(access: TableAccess, source_columns: Mapping[str, str]) -> dict[str, str]:
    """``source_columns`` without the hidden ones, in source order."""
    return {c: t for c, t in source_columns.items() if not access.is_hidden(c)}
