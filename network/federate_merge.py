"""Merge the domains' answers to a federated query's parts, per group, with DuckDB.

The answers are small (one row per group and domain) and hold aggregates only, never a
protected row, so an in-process DuckDB with no file or network access merges them:

1. ``parts``: every domain's answer, tagged with the domain's position ``__d`` (and, for
   variances, the domain's noise curvature terms ``__cN_*``, see below);
2. ``windowed``: for variances, the group's mean over all domains (a window per group);
3. ``m``: one row per group (NULL keys equal, as in GROUP BY) with a statistic ``__sN``
   per part ``__pN`` — counts and sums summed, MIN of minima, MAX of maxima, the mean
   from counts and means, M2 by the parallel algorithm — plus ``domain_count``;
4. ``merged``: each analyst aggregate ``__aN`` from those statistics;

then the analyst's select list, HAVING, ORDER BY and LIMIT run over ``merged``.

**Noisy parts are clamped once, here.** A network node asks dp domains for their parts
unclamped (:mod:`network.federate_noise`): a noisy count may be negative, a noisy
variance too. Clamping each domain's part at 0 before merging biases the merge upward
(the mean of ``max(X, 0)`` exceeds the mean of X); so the merge adds the noisy parts as
drawn and then makes a merged COUNT at least 0, gives AVG only for a positive merged count,
and makes a variance at least 0 — once. A domain whose noisy count is exactly 0 has no AVG
or VAR_POP (it contributes its count, not its sums; with unclamped parts, whose counts are
not rounded, this does not happen).

**Variances are corrected for the bias of noisy totals.** VAR_POP = Q/N − (S/N)² of noisy
totals is biased (E[S²] = S² + Var S, and 1/N is convex): the second-order term
``½ Σ_d σ_d²·a_dᵀ ∇²f a_d`` over the domains' draws (loads a_d, variances σ_d²) is
subtracted before clamping. It needs four sums per group over the domains that returned it
(:func:`network.federate_noise.curvature`), ``K_nn, K_ns, K_nq, K_ss``; with
``x̄ = S/N``, ``v = M2/N`` and ``u = 1/(N − 1)``:

* VAR_POP: ``[(v − 2x̄²)·K_nn + 4x̄·K_ns − K_nq − K_ss] / N²``;
* VAR_SAMP: ``(M2·u³ − x̄²·u/N − x̄²·u²)·K_nn + 2x̄·(u/N + u²)·K_ns − u²·K_nq − (u/N)·K_ss``.

Raw and aggregate domains add no noise (all K are 0), so their merge is exact.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa

from gateway.errors import StockadeError
from network.federate_noise import curvature, domain_noise
from network.federate_split import DOMAIN_COUNT, DOMAINS, MERGED, Aggregate, Part, Split

# The merge runs analyst expressions (over aggregates), so its DuckDB is locked down.
_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "threads": "1",
    "memory_limit": "256MB",
}


@functools.cache
def _database() -> duckdb.DuckDBPyConnection:
    """One in-memory database for every merge; each merge has its own connection (cursor),
    whose registered answers no other merge sees."""
    con = duckdb.connect(":memory:", config=_CONFIG)
    con.execute("SET lock_configuration = true")
    return con


#: The curvature sums of a variance part (see the module and ``federate_noise.curvature``).
CURVATURE = ("nn", "ns", "nq", "ss")
Curvatures = Mapping[int, tuple[float, float, float, float]]  # var part index -> sums


def merge_table(split: Split, parts: Sequence[tuple[str, pa.Table]]) -> pa.Table:
    """The final answer with its hidden columns (``__sN``, ``__aN``, ``__domains``)."""
    needed = [*split.keys, *(p.alias for p in split.parts)]
    variances = [i for i, p in enumerate(split.parts) if p.kind == "var_pop"]
    curvatures: list[Curvatures] = []
    con = _database().cursor()
    try:
        for index, (name, table) in enumerate(parts):
            missing = [c for c in needed if c not in table.column_names]
            if missing:
                raise StockadeError(
                    f"Domain '{name}' answered the federated query without the column(s) "
                    f"{', '.join(missing)}; is it running a different Stockade version?")
            con.register(f"__part{index}", table.select(needed))
            noise = domain_noise(split, table) if variances else None
            curvatures.append({i: curvature(noise, split.parts[i].arg) for i in variances}
                              if noise else {})
        return con.sql(merge_sql(split, len(parts), curvatures)).to_arrow_table()
    finally:
        con.close()


def merge_sql(split: Split, count: int, curvatures: Sequence[Curvatures] = ()) -> str:
    """The whole merge as one DuckDB query over ``__part0`` … ``__part{count-1}``.

    ``curvatures`` holds, per domain, the curvature sums of each variance part (none:
    exact parts).

    >>> from network.federate_split import split as split_query
    >>> s = split_query("SELECT COUNT(*) AS n FROM federated.onc.scr")
    >>> print(merge_sql(s, 2))
    WITH parts AS (SELECT 0 AS __d, __p0 FROM __part0
      UNION ALL BY NAME SELECT 1 AS __d, __p0 FROM __part1),
    windowed AS (SELECT * FROM parts),
    m AS (SELECT SUM(__p0) AS __s0,
      COUNT(DISTINCT __d) AS domain_count, LIST(DISTINCT __d) AS __domains FROM windowed),
    merged AS (SELECT *, CAST(GREATEST(COALESCE(__s0, 0), 0) AS BIGINT) AS __a0 FROM m)
    SELECT __a0 AS "n", domain_count, __s0, __a0, __domains FROM merged
    """
    columns = ", ".join([*split.keys, *(p.alias for p in split.parts)])
    variances = [i for i, p in enumerate(split.parts) if p.kind == "var_pop"]

    def constants(domain: int) -> str:
        sums = curvatures[domain] if domain < len(curvatures) else {}
        return "".join(
            f", CAST({float(value)!r} AS DOUBLE) AS __c{i}_{name}" for i in variances
            for name, value in zip(CURVATURE, sums.get(i, (0.0,) * 4), strict=True))

    union = "\n  UNION ALL BY NAME ".join(
        f"SELECT {i} AS __d, {columns}{constants(i)} FROM __part{i}" for i in range(count))
    by = {(p.kind, p.arg): p for p in split.parts}
    partition = f"PARTITION BY {', '.join(split.keys)}" if split.keys else ""
    means = [f", SUM({by['count', p.arg].alias} * {by['avg', p.arg].alias}) OVER ({partition})"
             f" / NULLIF(SUM({by['count', p.arg].alias}) OVER ({partition}), 0) AS __w{i}"
             for i, p in enumerate(split.parts) if p.kind == "var_pop"]
    stats = [f"{_statistic(i, p, by)} AS __s{i}" for i, p in enumerate(split.parts)]
    stats += [f"SUM(__c{i}_{name}) AS __c{i}_{name}" for i in variances for name in CURVATURE]
    group = f"\n  GROUP BY {', '.join(split.keys)}" if split.keys else ""
    keys = "".join(f"{k}, " for k in split.keys)
    aggregates = "".join(f", {_merged(a, split)} AS {a.alias}" for a in split.aggregates)
    return (
        f"WITH parts AS ({union}),\n"
        f"windowed AS (SELECT *{''.join(means)} FROM parts),\n"
        f"m AS (SELECT {keys}{', '.join(stats)}{',' if stats else ''}\n"
        f"  COUNT(DISTINCT __d) AS {DOMAIN_COUNT}, LIST(DISTINCT __d) AS {DOMAINS} "
        f"FROM windowed{group}),\n"
        f"{MERGED} AS (SELECT *{aggregates} FROM m)\n"
        f"{split.final.sql('duckdb')}"
    )


def _statistic(index: int, part: Part, by: dict[tuple[str, str], Part]) -> str:
    """What part ``__pN`` becomes per group, over all domains (``__sN``)."""
    p = part.alias
    if part.kind in ("count", "sum"):
        return f"SUM({p})"
    if part.kind in ("min", "max"):
        return f"{part.kind.upper()}({p})"
    n = by["count", part.arg].alias
    if part.kind == "avg":  # the mean over all domains, weighted by their counts
        return f"SUM({n} * {p}) / NULLIF(SUM({n}), 0)"
    # var_pop: M2 = Σ M2_i + Σ n_i (mean_i - mean)², Chan et al.'s parallel algorithm for
    # k parts, with each domain's M2_i = n_i · VAR_POP_i and the group mean from `windowed`.
    mean = by["avg", part.arg].alias
    return f"SUM({p} * {n} + {n} * POW({mean} - __w{index}, 2))"


def _merged(aggregate: Aggregate, split: Split) -> str:
    """An analyst aggregate over the statistics of its parts (noisy parts clamped once)."""
    s = [f"__s{split.parts.index(p)}" for p in aggregate.parts]
    kind = aggregate.kind
    if kind == "count":
        return f"CAST(GREATEST(COALESCE({s[0]}, 0), 0) AS BIGINT)"
    if kind in ("sum", "min", "max"):
        return s[0]
    if kind == "avg":
        total, n = s
        return f"CASE WHEN {n} > 0 THEN CAST({total} AS DOUBLE) / {n} END"
    n_stat, mean, m2 = s
    c = {name: f"__c{split.parts.index(aggregate.parts[2])}_{name}" for name in CURVATURE}
    n = f"CAST({n_stat} AS DOUBLE)"
    if kind.endswith("_pop"):
        least, value = 0, f"{m2} / {n}"
        bias = (f"((({value}) - 2 * {mean} * {mean}) * {c['nn']} + 4 * {mean} * {c['ns']}"
                f" - {c['nq']} - {c['ss']}) / ({n} * {n})")
    else:
        least, value, u = 1, f"{m2} / ({n} - 1)", f"(1 / ({n} - 1))"
        bias = (f"({m2} * {u} * {u} * {u} - {mean} * {mean} * {u} / {n}"
                f" - {mean} * {mean} * {u} * {u}) * {c['nn']}"
                f" + 2 * {mean} * ({u} / {n} + {u} * {u}) * {c['ns']}"
                f" - {u} * {u} * {c['nq']} - {u} / {n} * {c['ss']}")
    variance = f"CASE WHEN {n_stat} > {least} THEN GREATEST({value} - ({bias}), 0) END"
    if kind.startswith("stddev"):
        return f"SQRT({variance})"
    return variance
