"""``stockade.catalog``: the datasets the caller may see, described for search.

An analyst action of :mod:`gateway.admin` (``docs/api.md``, "Analyst actions").
It answers from :meth:`gateway.domain.Domain.catalog`, so it shows exactly what
the caller's role can query: datasets the role may not read are absent, hidden
columns are absent, masked columns have their mask's type. The network node's
dataset search (:mod:`network.search`) asks every domain for it with the
analyst's own credentials.

A dataset's ``mode`` is its tables' mode when they share one, else ``mixed``
(each table also carries its own):

>>> dataset_mode(["raw", "raw"]), dataset_mode(["raw", "aggregate"])
('raw', 'mixed')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.admin import _action, check_fields
from gateway.domain import Domain
from policy.model import ColumnPolicy
from policy.principal import Principal

MIXED = "mixed"


def dataset_mode(modes: Sequence[str]) -> str:
    """The one mode of a dataset's tables, or ``mixed``."""
    distinct = set(modes)
    return modes[0] if len(distinct) == 1 else MIXED


@_action("stockade.catalog",
         "The datasets you can see: description, tags, your mode, tables and their columns",
         owner=False, audited=False)
def catalog(domain: Domain, principal: Principal, body: dict[str, Any]) -> list[dict[str, Any]]:
    check_fields(body, ())
    policy = domain.policy
    out: dict[str, dict[str, Any]] = {}
    for visible in domain.catalog(principal):  # sorted by (dataset, table)
        dataset = policy.datasets[visible.dataset]
        entry = out.setdefault(visible.dataset, {
            "dataset": visible.dataset,
            "description": dataset.description,
            "tags": list(dataset.tags),
            "mode": None,
            "tables": [],
        })
        columns = dataset.tables[visible.name].columns
        entry["tables"].append({
            "table": visible.name,
            "description": visible.description,
            "mode": visible.access.mode,
            "columns": [{"name": field.name, "type": str(field.type),
                         "description": _column_description(columns, field.name)}
                        for field in visible.schema],
        })
    for entry in out.values():
        entry["mode"] = dataset_mode([t["mode"] for t in entry["tables"]])
    return list(out.values())


def _column_description(columns: Mapping[str, ColumnPolicy], name: str) -> str:
    column = columns.get(name)
    return column.description if column is not None else ""
