"""The exact measurements of a ``dp`` query, as one DuckDB aggregate query.

Over the query's relation (:mod:`gateway.dp.translate`), per group:

1. **rows are bounded per privacy unit**: at most ``max_rows_per_unit`` rows of
   each unit are kept, chosen uniformly at random. A source that cannot change
   while the gateway runs is bounded once, in an immutable snapshot the engine
   built (``sample=False``: the relation already reads it); any other source is
   bounded in the query itself (``sample=True``): ``ROW_NUMBER() OVER
   (PARTITION BY u ORDER BY r)`` with ``r = random()`` computed one level down
   (DuckDB refuses a volatile function in a window's ``ORDER BY``). No path
   skips the bound because the data happened to meet it, so the work done, and
   the time taken, never depend on whether one person exceeds it;
2. **values are clamped** to the policy's bounds in every query;
3. each measurement is a ``COUNT`` or a ``SUM`` (sums, and sums of squares
   around the bounds' midpoint, as DOUBLE); the key count that censors rare
   groups counts the bounded rows. That is as safe as SmartNoise's
   ``COUNT(DISTINCT u)``: a unit has at most ``m`` bounded rows, SmartNoise's
   threshold ``τ = m·(1 − ln(2δ/m)/ε)`` with Laplace noise of scale ``m/ε``
   releases a group made by one unit's rows with probability at most ``δ/m``,
   and a unit reaches at most ``m`` groups.

With declared public keys the measurements are joined onto the grid of declared
keys: every declared group is released (measurements of 0 where no row has it)
and groups with undeclared keys are dropped, so which keys occur is never shown.

>>> from gateway.dp.translate import DpQuery, Measure
>>> from policy.access import TableAccess
>>> q = DpQuery(access=TableAccess("h", "v", "dp", privacy_unit="pid", max_rows_per_unit=2),
...             relation_sql="SELECT 1 AS u, 2 AS v0", aggregate_sql="", keys=("v0",),
...             measures=(Measure("m_keys", "keys"), Measure("m_count", "count")),
...             outputs=(), having=None, order=(), limit=None, bounds=(("v0", 0, 9),),
...             grouped=True, normalized="")
>>> print(aggregate_sql(q, relation="dp.rel", sample=True).replace(" FROM", "\\nFROM")
...       .replace(" AS __stockade_clamped", "\\nAS __stockade_clamped")
...       .replace(" ORDER BY", "\\n  ORDER BY"))
SELECT "v0", COUNT(*) AS m_keys, COUNT(*) AS m_count
FROM (SELECT "v0"
FROM (SELECT u, "v0"
FROM (SELECT u, "v0", ROW_NUMBER() OVER (PARTITION BY u
  ORDER BY __stockade_random) AS __stockade_row
FROM (SELECT u, "v0", RANDOM() AS __stockade_random
FROM dp.rel AS __stockade_rel) AS __s1) AS __s2 WHERE __stockade_row <= 2) AS __stockade_bounded)
AS __stockade_clamped GROUP BY "v0"
"""

from __future__ import annotations

from typing import Any

from gateway.dp.translate import DpQuery, Measure


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _clamp(value: str, lower: float, upper: float) -> str:
    v = _quote(value)
    lo, hi = repr(float(lower)), repr(float(upper))
    return f"CASE WHEN {v} < {lo} THEN {lo} WHEN {v} > {hi} THEN {hi} ELSE {v} END"


def _aggregate(m: Measure) -> str:
    if m.kind in ("keys",) or (m.kind == "count" and m.value is None):
        return f"COUNT(*) AS {m.name}"
    c = _quote(f"c_{m.value}")
    if m.kind == "count":
        return f"COUNT({c}) AS {m.name}"
    if m.kind == "sum":
        return f"SUM(CAST({c} AS DOUBLE)) AS {m.name}"
    d = f"(CAST({c} AS DOUBLE) - {float(m.centre)!r})" if m.centre else f"CAST({c} AS DOUBLE)"
    return f"SUM({d} * {d}) AS {m.name}"


def bounded(relation: str, columns: list[str], *, unit: bool, max_rows: int,
            sample: bool) -> str:
    """``relation`` (SQL text or a table name) with at most ``max_rows`` rows per unit."""
    source = relation if " " not in relation.strip() else f"({relation})"
    if not (unit and sample):
        return f"{source} AS __stockade_rel"
    names = ", ".join(columns)
    return (f"(SELECT {names} FROM (SELECT {names}, ROW_NUMBER() OVER (PARTITION BY u "
            "ORDER BY __stockade_random) AS __stockade_row FROM (SELECT "
            f"{names}, RANDOM() AS __stockade_random FROM {source} AS __stockade_rel) AS __s1) "
            f"AS __s2 WHERE __stockade_row <= {int(max_rows)}) AS __stockade_bounded")


def aggregate_sql(query: DpQuery, *, relation: str, sample: bool) -> str:
    """The exact measurements of ``query`` over ``relation`` (see the module doc)."""
    access = query.access
    limits = {v: (lo, hi) for v, lo, hi in query.bounds}
    summed = sorted({m.value for m in query.measures if m.value is not None})
    keys = [_quote(k) for k in query.keys]
    clamped = []
    for value in summed:
        lo, hi = limits.get(value, (None, None))
        if lo is None or hi is None:  # COUNT(col) only: no clamp needed
            clamped.append(f"{_quote(value)} AS {_quote('c_' + value)}")
        else:
            clamped.append(f"{_clamp(value, lo, hi)} AS {_quote('c_' + value)}")
    inner = ", ".join(dict.fromkeys(keys + clamped)) or "1 AS one"
    needed = ["u"] + [_quote(k) for k in query.keys] + [_quote(v) for v in summed]
    prefix = ""
    sampled = sample and access.privacy_unit is not None
    if sampled and " " in relation.strip():
        # Materialised first: DuckDB 1.5.5 fails to bind some windows over a filtered
        # view otherwise (an internal error naming a column of the row filter).
        prefix = f"WITH __stockade_relation AS MATERIALIZED ({relation}) "
        relation = "__stockade_relation"
    source = bounded(relation, list(dict.fromkeys(needed)),
                     unit=access.privacy_unit is not None,
                     max_rows=access.max_rows_per_unit or 1, sample=sample)
    items = keys + [_aggregate(m) for m in query.measures]
    sql = (f"{prefix}SELECT {', '.join(items)} FROM (SELECT {inner} FROM {source}) "
           "AS __stockade_clamped")
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    if query.public_keys is None:
        return sql
    types = query.public_key_types or tuple("" for _ in keys)
    subs = []
    for i, (key, values, duck_type) in enumerate(zip(keys, query.public_keys, types,
                                                     strict=True)):
        column = f"UNNEST([{', '.join(_literal(v) for v in values)}])"
        if duck_type:
            column = f"CAST({column} AS {duck_type})"
        subs.append(f"(SELECT {column} AS {key}) AS __g{i}")
    grid = f"(SELECT * FROM {' CROSS JOIN '.join(subs)})"
    on = " AND ".join(f"g.{k} IS NOT DISTINCT FROM a.{k}" for k in keys)
    measures = ", ".join(f"COALESCE(a.{m.name}, 0) AS {m.name}" for m in query.measures)
    return (f"SELECT {', '.join('g.' + k for k in keys)}, {measures} FROM {grid} AS g "
            f"LEFT JOIN ({sql}) AS a ON {on}")
