"""Check a loaded policy against the real source schemas.

>>> from policy.loader import parse_policy
>>> policy = parse_policy('''
... version: 1
... domain: {name: d}
... datasets:
...   s:
...     tables:
...       t:
...         source: {format: csv, path: t.csv}
...         row_filter: "sitee = 'x'"
... ''', filename="p.yaml", base_dir="/")
>>> check_against_schemas(policy, {("s", "t"): {"site": "VARCHAR"}})
Traceback (most recent call last):
...
gateway.errors.PolicyError: p.yaml: datasets.s.tables.t.row_filter: Unknown column 'sitee'. Did you mean 'site'?
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlglot import exp

from gateway.errors import PolicyError, did_you_mean
from policy.expressions import FragmentError, parse_fragment
from policy.model import Policy

SchemaMap = Mapping[tuple[str, str], Mapping[str, str]]


def _check_names(
    names: Iterable[str], columns: Mapping[str, str], *, where: str, file: str | None
) -> None:
    known = {c.lower() for c in columns}
    for name in names:
        if name.lower() not in known:
            raise PolicyError(
                f"Unknown column '{name}'.{did_you_mean(name, columns)}", where=where, file=file
            )


def _check_fragment(
    text: str | None, columns: Mapping[str, str], *, where: str, file: str | None
) -> None:
    if text is None:
        return
    try:
        parsed = parse_fragment(text)
    except FragmentError as err:
        raise PolicyError(err.message, where=where, file=file) from None
    _check_names([c.name for c in parsed.find_all(exp.Column)], columns, where=where, file=file)


def check_against_schemas(policy: Policy, schemas: SchemaMap) -> None:
    """Raise :class:`PolicyError` when the policy names columns its sources lack.

    ``schemas`` maps ``(dataset, table)`` to ``{column: DuckDB type name}``.
    """
    file = policy.file
    for ds_name, dataset in policy.datasets.items():
        for t_name, table in dataset.tables.items():
            where = f"datasets.{ds_name}.tables.{t_name}"
            columns = schemas.get((ds_name, t_name))
            if columns is None:
                raise PolicyError(
                    "No schema is known for this table's source", where=where, file=file
                )
            _check_names(table.columns, columns, where=f"{where}.columns", file=file)
            if table.privacy_unit is not None:
                _check_names(
                    [table.privacy_unit], columns, where=f"{where}.privacy_unit", file=file
                )
            _check_fragment(table.row_filter, columns, where=f"{where}.row_filter", file=file)
            for c_name, column in table.columns.items():
                _check_fragment(
                    column.mask, columns, where=f"{where}.columns.{c_name}.mask", file=file
                )
    for r_name, role in policy.roles.items():
        for ds_name, grant in role.datasets.items():
            where = f"roles.{r_name}.datasets.{ds_name}"
            for t_name in policy.datasets[ds_name].tables:
                columns = schemas.get((ds_name, t_name), {})
                _check_fragment(
                    grant.row_filter, columns, where=f"{where}.row_filter ({t_name})", file=file
                )
            for t_name, t_grant in grant.tables.items():
                columns = schemas.get((ds_name, t_name), {})
                t_where = f"{where}.tables.{t_name}"
                _check_names(t_grant.hidden, columns, where=f"{t_where}.hidden", file=file)
                _check_fragment(
                    t_grant.row_filter, columns, where=f"{t_where}.row_filter", file=file
                )
