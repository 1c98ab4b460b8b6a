"""Merge the domains' answers to a federated query's parts, per group, with DuckDB.

The answers are small (one row per group and domain) and hold aggregates only, never a
protected row, so an in-process DuckDB with no file or network access merges them:

1. ``parts``: every domain's answer, tagged with the domain's position ``__d``;
2. ``windowed``: for variances, the group's mean over all domains (a window per group);
3. ``m``: one row per group (NULL keys equal, as in GROUP BY) with a statistic ``__sN``
   per part ``__pN`` — counts and sums summed, MIN of minima, MAX of maxima, the mean
   from counts and means, M2 by the parallel algorithm — plus ``domain_count``;
4. ``merged``: each analyst aggregate ``__aN`` from those statistics;

then the analyst's select list, HAVING, ORDER BY and LIMIT run over ``merged``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import duckdb
import pyarrow as pa

from gateway.errors import StockadeError
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


def merge_table(split: Split, parts: Sequence[tuple[str, pa.Table]]) -> pa.Table:
    """The final answer with its hidden columns (``__sN``, ``__domains``) still attached."""
    needed = [*split.keys, *(p.alias for p in split.parts)]
    con = _database().cursor()
    try:
        for index, (name, table) in enumerate(parts):
            missing = [c for c in needed if c not in table.column_names]
            if missing:
                raise StockadeError(
                    f"Domain '{name}' answered the federated query without the column(s) "
                    f"{', '.join(missing)}; is it running a different Stockade version?")
            con.register(f"__part{index}", table.select(needed))
        return con.sql(merge_sql(split, len(parts))).to_arrow_table()
    finally:
        con.close()


def merge_sql(split: Split, count: int) -> str:
    """The whole merge as one DuckDB query over ``__part0`` … ``__part{count-1}``.

    >>> from network.federate_split import split as split_query
    >>> s = split_query("SELECT COUNT(*) AS n FROM federated.onc.scr")
    >>> print(merge_sql(s, 2))
    WITH parts AS (SELECT 0 AS __d, __p0 FROM __part0
      UNION ALL BY NAME SELECT 1 AS __d, __p0 FROM __part1),
    windowed AS (SELECT * FROM parts),
    m AS (SELECT SUM(__p0) AS __s0,
      COUNT(DISTINCT __d) AS domain_count, LIST(DISTINCT __d) AS __domains FROM windowed),
    merged AS (SELECT *, CAST(COALESCE(__s0, 0) AS BIGINT) AS __a0 FROM m)
    SELECT __a0 AS "n", domain_count, __s0, __domains FROM merged
    """
    columns = ", ".join([*split.keys, *(p.alias for p in split.parts)])
    union = "\n  UNION ALL BY NAME ".join(
        f"SELECT {i} AS __d, {columns} FROM __part{i}" for i in range(count))
    by = {(p.kind, p.arg): p for p in split.parts}
    partition = f"PARTITION BY {', '.join(split.keys)}" if split.keys else ""
    means = [f", SUM({by['count', p.arg].alias} * {by['avg', p.arg].alias}) OVER ({partition})"
             f" / NULLIF(SUM({by['count', p.arg].alias}) OVER ({partition}), 0) AS __w{i}"
             for i, p in enumerate(split.parts) if p.kind == "var_pop"]
    stats = [f"{_statistic(i, p, by)} AS __s{i}" for i, p in enumerate(split.parts)]
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
    """An analyst aggregate over the statistics of its parts."""
    s = [f"__s{split.parts.index(p)}" for p in aggregate.parts]
    kind = aggregate.kind
    if kind == "count":
        return f"CAST(COALESCE({s[0]}, 0) AS BIGINT)"
    if kind in ("sum", "min", "max"):
        return s[0]
    if kind == "avg":
        total, n = s
        return f"CAST({total} AS DOUBLE) / NULLIF({n}, 0)"
    n, _mean, m2 = s
    population = kind.endswith("_pop")
    least = 0 if population else 1
    denominator = f"CAST({n} AS DOUBLE)" + ("" if population else " - 1")
    variance = f"CASE WHEN {n} > {least} THEN {m2} / ({denominator}) END"
    if kind.startswith("stddev"):
        # M2 is a sum of squares, never below 0 from raw parts; noisy parts may be.
        return f"SQRT(CASE WHEN {variance} < 0 THEN 0 ELSE {variance} END)"
    return variance
