"""SmartNoise metadata for one ``dp`` query, built from the policy.

The metadata describes the relation ``dp.rel`` of :mod:`gateway.dp.translate`:

- ``u`` (the raw privacy unit, even when the policy hides or masks it) is the
  ``private_id``; a table without ``privacy_unit`` uses ``row_privacy``;
- ``max_rows_per_unit`` is ``max_ids`` (1 when the policy does not say);
- each ``v``/``k`` column gets its type from the engine's DuckDB type, and the
  policy's ``lower``/``upper`` as bounds (values are clamped to them);
  columns are nullable;
- ``sample_max_ids`` is on unless the rows per unit are bounded by
  construction (row privacy, or the relation reads a bounded snapshot of the
  table, :mod:`gateway.snapshots`);
- ``censor_dims`` (hide rare groups) is on for grouped queries; a query without
  ``GROUP BY`` releases exactly one row whatever the data, so it has nothing to
  censor and no key count to pay for.

>>> import pyarrow as pa
>>> md = dp_metadata(pa.schema([("u", pa.int64()), ("v0", pa.float64())]),
...                  bounds={"v0": (0.0, 100.0)}, has_unit=True, max_rows_per_unit=2,
...                  rows_bounded=False, grouped=True)
>>> t = md["dp.rel"]
>>> t.max_ids, t.sample_max_ids, t.censor_dims, t.row_privacy, t["u"].is_key, t["v0"].upper
(2, True, True, False, True, 100.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyarrow as pa
from snsql.metadata import Boolean, DateTime, Float, Int, Metadata, String, Table, Unknown

from gateway.dp.translate import RELATION, UNIT


def _column(name: str, arrow_type: pa.DataType, bounds: tuple[float | None, float | None]
            ) -> object:
    lower, upper = bounds
    if pa.types.is_integer(arrow_type):
        return Int(name, lower=None if lower is None else math.floor(lower),
                   upper=None if upper is None else math.ceil(upper))
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return Float(name, lower=None if lower is None else float(lower),
                     upper=None if upper is None else float(upper))
    if pa.types.is_boolean(arrow_type):
        return Boolean(name)
    if pa.types.is_temporal(arrow_type):
        return DateTime(name)
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return String(name)
    return Unknown(name)


def dp_metadata(
    relation: pa.Schema,
    *,
    bounds: Mapping[str, tuple[float | None, float | None]],
    has_unit: bool,
    max_rows_per_unit: int | None,
    rows_bounded: bool,
    grouped: bool,
) -> Metadata:
    """SmartNoise metadata for the relation whose Arrow schema is ``relation``."""
    columns: list[object] = []
    for field in relation:
        if field.name == UNIT and has_unit:
            columns.append(String(UNIT, is_key=True))
        else:
            columns.append(_column(field.name, field.type, bounds.get(field.name, (None, None))))
    schema, name = RELATION.split(".")
    table = Table(
        schema,
        name,
        columns,
        row_privacy=not has_unit,
        max_ids=(max_rows_per_unit or 1) if has_unit else 1,
        sample_max_ids=has_unit and not rows_bounded,
        censor_dims=grouped,
        clamp_counts=True,
        clamp_columns=True,
    )
    return Metadata([table], engine="postgres")
