"""From exact measurements to the released answer: noise, then post-processing only.

:func:`release` takes the exact measurements of a ``dp`` query (one row per
group, :mod:`gateway.dp.aggregate`) and returns the answer. Everything after the
noise is post-processing of noisy values and public parameters, and is *total*:
it cannot fail, whatever the values.

1. **noise**: each measurement gets Laplace noise of its mechanism's scale, one
   OpenDP call per measurement for all groups;
2. **censoring**: a group is released only if its noisy key count exceeds the
   threshold τ (not with declared public keys, which release every group);
3. **counts** are rounded to the nearest whole number (never truncated) and
   made at least 0 — unless the caller asked for unclamped parts (a network
   node merging domains), which get every noisy measurement as drawn;
4. **order**: groups are sorted by their key, so the order of released rows, and
   which rows a ``LIMIT`` keeps, never depend on the data's physical order;
5. **outputs**, ``HAVING`` and ``ORDER BY`` are evaluated by DuckDB over the
   noisy measurements, each expression under ``TRY`` (an error becomes NULL); a
   ratio whose noisy denominator is not positive is NULL; NaN and ±inf become
   NULL; a row whose ``HAVING`` is NULL is not released;
6. **intervals**: a column that is exactly one measurement has an exact 95 %
   interval (``b·ln 20`` for Laplace noise of scale b; for whole numbers the
   smallest whole half-width covering at least 95 %, with its exact coverage); a
   derived column (``AVG``, ``VARIANCE``, arithmetic) gets a 95 % half-width per
   row, the 95th percentile of ``|f(x̂ + e) − f(x̂)|`` over simulated noise ``e``
   of the same scales (a parametric bootstrap; see ``docs/dp.md``). A column
   that reads one sum of squares taken around a point other than 0 (unclamped
   parts) names it (``stockade.dp.centre``): a network node needs it to merge
   variances.

>>> import math
>>> whole_half_width(4.0)  # Laplace scale 4: b·ln 20 = 11.98 → 12 covers 95.6 %
(12, 0.956...)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.dp.mechanisms import ci95_half_width
from gateway.dp.translate import KEYCOUNT, DpQuery, Measure

#: Keys of the Arrow metadata of a dp answer.
META = "stockade.dp."
NULL_WHEN = "the noisy denominator is not positive"
NULL_WHEN_PARTS = "the noisy denominator is 0"  # unclamped parts
_LN20 = math.log(20.0)

_con: duckdb.DuckDBPyConnection | None = None
_con_lock = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of the in-memory database that evaluates post-processing (no data in it)."""
    global _con
    with _con_lock:
        if _con is None:
            con = duckdb.connect(":memory:", config={
                "autoload_known_extensions": False, "autoinstall_known_extensions": False})
            for statement in ("SET threads = 1", "SET memory_limit = '512MB'",
                              "SET enable_external_access = false",
                              "SET allow_community_extensions = false",
                              "SET lock_configuration = true"):
                con.execute(statement)
            _con = con
        return _con.cursor()


def whole_half_width(scale: float) -> tuple[int, float]:
    """The smallest whole k with P(|round(L)| ≤ k) ≥ 95 % for Laplace(scale) noise, and
    that probability, 1 − exp(−(k + ½)/b)."""
    k = max(0, math.ceil(scale * _LN20 - 0.5))
    return k, 1.0 - math.exp(-(k + 0.5) / scale)


#: Below this many values a query's noise is drawn on the calling thread only.
_PARALLEL_DRAWS = 16
_draw_pool: ThreadPoolExecutor | None = None
_draw_pool_lock = threading.Lock()


def _draw(columns: list[tuple[Any, list[float]]]) -> list[list[float]]:
    """Each mechanism's ``release`` of its column, in order.

    OpenDP's samplers run without the GIL, so when there is enough to draw the
    second half of the columns is drawn on a helper thread meanwhile.
    """
    global _draw_pool
    total = sum(len(values) for _, values in columns)
    if len(columns) < 2 or total < _PARALLEL_DRAWS or (os.cpu_count() or 1) < 2:
        return [list(m.release(values)) for m, values in columns]
    with _draw_pool_lock:
        if _draw_pool is None:
            _draw_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                            thread_name_prefix="stockade-noise")
        pool = _draw_pool
    half = len(columns) // 2
    later = pool.submit(lambda: [list(m.release(v)) for m, v in columns[half:]])
    try:
        first = [list(m.release(values)) for m, values in columns[:half]]
    finally:
        rest = later.result()
    return first + rest


def _exact_values(exact: pa.Table, name: str) -> list[float]:
    column = exact.column(name)
    values = pc.fill_null(pc.cast(column, pa.float64()), 0.0)
    return [float(v) for v in values.to_numpy(zero_copy_only=False)]


def _whole(values: np.ndarray[Any, Any], *, nonneg: bool) -> pa.Array:
    rounded = np.rint(values)
    if nonneg:
        rounded = np.maximum(rounded, 0.0)
    ok = np.isfinite(rounded) & (np.abs(rounded) < 2.0 ** 62)
    return pa.array(np.where(ok, rounded, 0).astype(np.int64), mask=~ok)


def _counts(values: np.ndarray[Any, Any], *, unclamped: bool) -> pa.Array:
    """Noisy counts as released: whole and at least 0, or as drawn for unclamped parts."""
    if unclamped:
        return pa.array(values, type=pa.float64())
    return _whole(values, nonneg=True)


def noisy_measurements(
    query: DpQuery,
    exact: pa.Table,
    mechanisms: Mapping[str, Any],
    *,
    threshold: float | None,
    unclamped: bool,
) -> pa.Table:
    """The keys and the noisy measurements of the released groups, sorted by key."""
    measures = list(query.measures)
    drawn = _draw([(mechanisms[m.name], _exact_values(exact, m.name)) for m in measures])
    noisy = {m.name: np.asarray(values, dtype=np.float64) for m, values in zip(measures, drawn,
                                                                               strict=True)}
    keep = np.ones(exact.num_rows, dtype=bool)
    if query.censored:
        assert threshold is not None
        keep = noisy[KEYCOUNT] > threshold
    columns: dict[str, pa.Array] = {}
    for key in query.keys:
        columns[key] = exact.column(key).combine_chunks()
    for m in measures:
        if m.kind == "keys":
            continue
        values = noisy[m.name]
        if m.kind == "count":
            columns[m.name] = _counts(values, unclamped=unclamped)
        else:
            columns[m.name] = pa.array(values, type=pa.float64())
    table = pa.table(columns) if columns else pa.table({"__one": pa.array([1] * len(keep))})
    table = table.filter(pa.array(keep))
    if query.keys:
        order = [(k, "ascending", "at_start") for k in query.keys]
        indices = pc.sort_indices(table, sort_keys=order)
        table = table.take(indices)
    return table.append_column("__row", pa.array(range(table.num_rows), type=pa.int64()))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _evaluate(query: DpQuery, noisy: pa.Table, *, unclamped: bool,
              limit: bool = True) -> pa.Table:
    """Outputs (as c0, c1, …, plus ``__row``), HAVING, ORDER BY and LIMIT over ``noisy``."""
    items = ["__row"] + [f"{(o.unclamped_sql or o.sql) if unclamped else o.sql} AS c{i}"
                         for i, o in enumerate(query.outputs)]
    having = f" WHERE {query.having}" if query.having else ""
    order = [f"{sql} {'DESC' if desc else 'ASC'} NULLS LAST" for sql, desc in query.order]
    order += [f"{_quote(k)} ASC NULLS FIRST" for k in query.keys]
    order.append("__row")
    sql = f"SELECT {', '.join(items)} FROM noisy{having} ORDER BY {', '.join(order)}"
    if limit and query.limit is not None:
        sql += f" LIMIT {int(query.limit)}"
    cur = _cursor()
    try:
        cur.register("noisy", noisy)
        return cur.execute(sql).to_arrow_table()
    finally:
        cur.close()


def _finite(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_floating(column.type):
        return pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
    return column


def _mechanism_of(query: DpQuery, name: str) -> Measure:
    return next(m for m in query.measures if m.name == name)


def _simulated_widths(query: DpQuery, noisy: pa.Table, answer: pa.Table,
                      mechanisms: Mapping[str, Any], derived: list[int], *,
                      unclamped: bool) -> dict[int, list[float | None]]:
    """Per released row, the 95 % half-width of each derived output (see the module doc)."""
    rows = answer.column("__row").to_pylist()
    if not rows or not derived:
        return {i: [None] * len(rows) for i in derived}
    base = noisy.take(pa.array(rows, type=pa.int64()))
    samples = int(min(2000, max(200, 200_000 // len(rows))))
    digest = hashlib.sha256(repr(base.to_pydict()).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    repeated = base.take(pa.array(np.repeat(np.arange(len(rows)), samples)))
    columns = {name: repeated.column(name) for name in repeated.column_names}
    for m in query.measures:
        if m.kind == "keys" or m.name not in columns:
            continue
        scale = float(mechanisms[m.name].scale)
        values = pc.cast(columns[m.name], pa.float64()).to_numpy(zero_copy_only=False)
        values = values + rng.laplace(0.0, scale, size=len(values))
        if m.kind == "count":
            columns[m.name] = _counts(values, unclamped=unclamped)
        else:
            columns[m.name] = pa.array(values)
    simulated = pa.table(columns)
    # The spread is simulated on the release with nothing clamped (a variance may be
    # negative, a root signed): clamping a value towards the non-negative truth only
    # brings it closer, so the interval of the unclamped value covers the released one.
    items = ["__row"] + [f"{query.outputs[i].spread_sql or query.outputs[i].sql} AS s{i}"
                         for i in derived]
    cur = _cursor()
    try:
        cur.register("simulated", simulated)
        cur.register("base", base)
        spreads = ", ".join(
            f"quantile_cont(abs(CAST(s.s{i} AS DOUBLE) - CAST(o.s{i} AS DOUBLE)), 0.95) AS w{i}"
            for i in derived)
        table = cur.execute(
            f"SELECT s.__row, {spreads} FROM (SELECT {', '.join(items)} FROM simulated) AS s "
            f"JOIN (SELECT {', '.join(items)} FROM base) AS o USING (__row) "
            "GROUP BY s.__row").to_arrow_table()
    finally:
        cur.close()
    by_row = {r: i for i, r in enumerate(table.column("__row").to_pylist())}
    out: dict[int, list[float | None]] = {}
    for i in derived:
        widths = table.column(f"w{i}").to_pylist()
        out[i] = [None if by_row.get(r) is None or widths[by_row[r]] is None
                  or not math.isfinite(widths[by_row[r]]) else float(widths[by_row[r]])
                  for r in rows]
    return out


def release(
    query: DpQuery,
    exact: pa.Table,
    mechanisms: Mapping[str, Any],
    *,
    threshold: float | None,
    epsilon: float,
    delta: float,
    unclamped: bool = False,
) -> pa.Table:
    """The released answer of ``query`` from its ``exact`` measurements (module doc)."""
    noisy = noisy_measurements(query, exact, mechanisms, threshold=threshold,
                               unclamped=unclamped)
    answer = _evaluate(query, noisy, unclamped=unclamped)
    derived = [i for i, o in enumerate(query.outputs) if o.noisy and not o.single]
    widths = _simulated_widths(query, noisy, answer, mechanisms, derived, unclamped=unclamped)
    fields, arrays, summary = [], [], []
    for i, output in enumerate(query.outputs):
        column = _finite(answer.column(f"c{i}"))
        meta: dict[str, str] = {}
        if output.noisy and output.measures:
            meta, info = _column_metadata(query, output, mechanisms, column.type,
                                          widths.get(i), unclamped=unclamped)
            summary.append({"column": output.name, **info})
        fields.append(pa.field(output.name, column.type, metadata=meta or None))
        arrays.append(column)
    schema = pa.schema(fields, metadata={META + "columns": json.dumps(summary),
                                         META + "epsilon": repr(epsilon),
                                         META + "delta": repr(delta),
                                         META + "order": "group key"})
    return pa.Table.from_arrays(arrays, schema=schema)


def _column_metadata(query: DpQuery, output: Any, mechanisms: Mapping[str, Any],
                     arrow_type: pa.DataType, by_row: Sequence[float | None] | None, *,
                     unclamped: bool = False) -> tuple[dict[str, str], dict[str, Any]]:
    scales = [float(mechanisms[name].scale) for name in output.measures]
    parts = [ci95_half_width("laplace", s) for s in scales]
    meta = {
        META + "mechanism": ",".join("laplace" for _ in scales),
        META + "scale": ",".join(repr(s) for s in scales),
        META + "derived": "false" if output.single else "true",
    }
    info: dict[str, Any] = {"mechanism": "laplace", "scale": scales,
                            "derived": not output.single}
    if output.single:
        if pa.types.is_integer(arrow_type):
            width, coverage = whole_half_width(scales[0])
            meta[META + "ci95_half_width"] = repr(float(width))
            meta[META + "ci95_coverage"] = repr(coverage)
            info.update(ci95_half_width=[float(width)], ci95_coverage=coverage)
        else:
            meta[META + "ci95_half_width"] = repr(parts[0])
            meta[META + "ci95_coverage"] = "0.95"
            info.update(ci95_half_width=parts, ci95_coverage=0.95)
    else:
        meta[META + "ci95_half_width"] = ",".join(repr(w) for w in parts)
        meta[META + "ci95_half_width_by_row"] = json.dumps(list(by_row or []))
        info.update(ci95_half_width=parts)
    if "CASE WHEN m_" in output.sql and "> 0 THEN" in output.sql:
        meta[META + "null_when"] = NULL_WHEN_PARTS if unclamped else NULL_WHEN
    centres = [m.centre for m in (_mechanism_of(query, n) for n in output.measures)
               if m.kind == "sumsq"]
    if len(centres) == 1 and centres[0]:
        meta[META + "centre"] = repr(float(centres[0]))
        info["centre"] = float(centres[0])
    return meta, info


def empty_exact(schema: pa.Schema) -> pa.Table:
    """An exact-measurements table with no rows (for the answer's schema)."""
    return schema.empty_table()


__all__ = ["META", "NULL_WHEN", "NULL_WHEN_PARTS", "noisy_measurements", "release",
           "whole_half_width"]
