"""Federated aggregates: plan one query for every domain, and merge their answers.

Pure: no I/O. :func:`plan_federated` reads a query on ``federated.DATASET.TABLE`` and
splits each aggregate into parts every domain can answer under its own mode and budget
(AVG into SUM and COUNT; VAR and STDDEV into COUNT, AVG and VAR_POP); the network sends
:attr:`FederatedPlan.domain_sql` to each domain and hands their answers to
:meth:`FederatedPlan.merge`, which merges them per group and applies the analyst's select
list, HAVING, ORDER BY and LIMIT. See docs/network.md, "Federated queries".

>>> import pyarrow as pa
>>> plan = plan_federated(
...     "SELECT site, AVG(age) AS mean_age FROM federated.oncology.screenings GROUP BY site")
>>> plan.dataset, plan.table, plan.columns
('oncology', 'screenings', ('site', 'age'))
>>> plan.domain_sql
'SELECT site AS __g0, SUM(age) AS __p0, COUNT(age) AS __p1 FROM oncology.screenings GROUP BY site'
>>> a = pa.table({"__g0": ["north", "south"], "__p0": [100, 50], "__p1": [2, 1]})
>>> b = pa.table({"__g0": ["north"], "__p0": [20], "__p1": [2]})
>>> for row in plan.merge([("st_marys", a), ("city_general", b)]).to_pylist():
...     print(row)
{'site': 'north', 'mean_age': 30.0, 'domain_count': 2}
{'site': 'south', 'mean_age': 50.0, 'domain_count': 1}
>>> plan_federated("SELECT COUNT(DISTINCT site) FROM federated.oncology.screenings")
Traceback (most recent call last):
...
gateway.errors.NotSupportedError: COUNT(DISTINCT …) cannot be merged across domains: ...
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from sqlglot import exp

from network.federate_merge import merge_table
from network.federate_noise import FEDERATED_META, annotate
from network.federate_split import DOMAIN_COUNT, FEDERATED, MERGEABLE, Split, split

__all__ = ["DOMAIN_COUNT", "FEDERATED", "FEDERATED_META", "MERGEABLE", "FederatedPlan",
           "plan_federated"]


@dataclass(frozen=True)
class FederatedPlan:
    """How one federated query runs: what every domain answers, and how to merge it."""

    #: The dataset and table the query reads (``federated.DATASET.TABLE``).
    dataset: str
    table: str
    #: The source columns the domains need (a domain without them cannot answer).
    columns: tuple[str, ...]
    #: The query every domain runs, in DuckDB's dialect, reading ``DATASET.TABLE``: the
    #: GROUP BY keys as ``__g0``, ``__g1``, … and the aggregate parts as ``__p0``, …
    domain_sql: str
    _split: Split = field(repr=False, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        """The answer's column names: the analyst's, then ``domain_count``."""
        return (*(o.name for o in self._split.outputs), DOMAIN_COUNT)

    def merge(self, parts: Sequence[tuple[str, pa.Table]]) -> pa.Table:
        """The answer from each domain's ``(name, answer)``, merged per group.

        A group a domain did not return (absent there, or suppressed by its policy) gets
        nothing from that domain; ``domain_count`` says how many domains it came from.
        Schema metadata: ``stockade.federated.domains`` (JSON list of the domains merged)
        and, when a domain answered in dp mode, ``stockade.federated.epsilon_spent`` /
        ``delta_spent`` / ``epsilon_remaining`` / ``delta_remaining`` ({domain: value}) and
        per noisy column ``stockade.dp.scale`` / ``ci95_half_width`` (largest over the
        rows), ``scale_by_row`` / ``ci95_half_width_by_row`` (JSON lists), ``mechanism``
        and ``derived``.
        """
        names = [name for name, _ in parts]
        if not names:
            raise ValueError("merge needs the answer of at least one domain")
        if len(set(names)) != len(names):
            raise ValueError(f"each domain may answer once, got {names}")
        answer = merge_table(self._split, parts)
        fields, schema = annotate(self._split, parts, answer)
        kept = len(self._split.outputs) + 1
        columns = [answer.column(i) for i in range(kept)]
        typed = [answer.schema.field(i).with_metadata(fields.get(i)) if i in fields
                 else answer.schema.field(i) for i in range(kept)]
        metadata = {FEDERATED_META + "domains": json.dumps(names), **schema}
        return pa.Table.from_arrays(columns, schema=pa.schema(typed, metadata=metadata))


def plan_federated(select: exp.Expr | str, *, dialect: str | None = None) -> FederatedPlan:
    """Plan a query on ``federated.DATASET.TABLE`` (SQL text in ``dialect``, or a tree).

    Refuses, with :class:`gateway.errors.NotSupportedError` naming the reason, what cannot
    be merged across domains: COUNT(DISTINCT …) and other DISTINCT aggregates, medians,
    quantiles and modes, window functions, joins, set operations, subqueries and CTEs, and
    queries that return rows rather than aggregates.
    """
    result = split(select, dialect=dialect)
    return FederatedPlan(result.dataset, result.table, result.columns, result.domain_sql,
                         result)
