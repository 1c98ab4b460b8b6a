r"""SmartNoise's SQL reader over the gateway's DuckDB engine.

SmartNoise has no DuckDB reader; DuckDB follows PostgreSQL's identifier rules,
so :class:`DuckDBReader` uses SmartNoise's Postgres name handling. SmartNoise
expects ``execute`` to return a header row and then the rows; there is no
commit or rollback (the engine is read-only).

Before running SmartNoise's SQL, :func:`duckdb_sql` rewrites it:

1. the table ``dp.rel`` becomes the policy relation (the table with the
   policy's row filters, masks and hidden columns, and the analyst's ``WHERE``),
   which reads the table's bounded snapshot when the engine keeps one
   (:mod:`gateway.snapshots`; SmartNoise then does not sample);
2. the per-unit reservoir sampling ``ROW_NUMBER() OVER (PARTITION BY u ORDER BY
   RANDOM())``, which DuckDB refuses (a volatile function in a window's ORDER
   BY), orders by a column computed as ``RANDOM()`` one level down instead: the
   same uniformly random choice of at most ``max_ids`` rows per unit;
3. the key count used to censor rare groups, ``COUNT(DISTINCT u)``, becomes
   ``COUNT(*)`` (a hash of every unit per group is the most expensive part of
   the query). This is safe because every unit has at most ``max_ids`` rows in
   the aggregated rows (sampled in the query, or read from a snapshot that
   holds at most ``max_ids`` rows per unit by construction):
   SmartNoise's threshold ``τ = m·(1 − ln(2δ/m)/ε)`` with Laplace noise of
   scale ``m/ε`` (``m = max_ids``) releases a group made by one unit's at most
   ``m`` rows with probability at most ``½·exp(−(τ − m)·ε/m) = δ/m``, and a
   unit can make at most ``m`` groups: δ in total, as with ``COUNT(DISTINCT)``.
   With row privacy SmartNoise already counts rows.

SmartNoise's clamp of every value column to its bounds is always kept.

>>> sql = duckdb_sql(
...     "SELECT COUNT(DISTINCT u) AS keycount, k AS k FROM ( SELECT *, ROW_NUMBER ( ) "
...     "OVER ( PARTITION BY u ORDER BY RANDOM ( ) ) AS row_num FROM ( SELECT u AS u, "
...     "k AS k FROM dp.rel ) AS clamped ) AS per_key_random WHERE per_key_random.row_num "
...     "<= 2 GROUP BY k", "SELECT 1 AS u, 2 AS k")
>>> print(sql.replace(" FROM", "\nFROM").replace(" WHERE", "\nWHERE"))
SELECT COUNT(*) AS keycount, k AS k
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY u ORDER BY __stockade_random) AS row_num
FROM (SELECT u AS u, k AS k, RANDOM() AS __stockade_random
FROM (SELECT 1 AS u, 2 AS k) AS rel) AS clamped) AS per_key_random
WHERE per_key_random.row_num <= 2 GROUP BY k
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import sqlglot
from snsql.sql.reader.base import SqlReader
from snsql.sql.reader.engine import Engine as SnEngine
from sqlglot import exp

from gateway.dp.translate import RELATION
from gateway.errors import StockadeError

RANDOM_COLUMN = "__stockade_random"

#: Runs DuckDB SQL, returns (column names, rows).
Runner = Callable[[str], tuple[Sequence[str], list[tuple[Any, ...]]]]

_translated: OrderedDict[tuple[Any, ...], str] = OrderedDict()
_translated_lock = threading.Lock()


def _random_one_level_down(window: exp.Window) -> None:
    select = window.find_ancestor(exp.Select)
    source = select.args.get("from_") if select is not None else None
    inner = source.this if source is not None else None
    if not isinstance(inner, exp.Subquery) or not isinstance(inner.this, exp.Select):
        raise StockadeError("Unexpected shape of SmartNoise's sampling query")
    inner.this.select(exp.alias_(exp.Rand(), RANDOM_COLUMN), append=True, copy=False)
    order = window.args["order"]
    for ordered in order.expressions:
        if ordered.find(exp.Rand):
            ordered.set("this", exp.column(RANDOM_COLUMN))


def _rewrite(smartnoise_sql: str, relation_sql: str) -> str:
    tree = sqlglot.parse_one(smartnoise_sql, read="postgres")
    schema, name = RELATION.split(".")
    relation = sqlglot.parse_one(relation_sql, read="duckdb")
    for table in list(tree.find_all(exp.Table)):
        if table.db == schema and table.name == name:
            table.replace(exp.Subquery(this=relation.copy(),
                                       alias=exp.TableAlias(this=exp.to_identifier(name))))
        else:  # pragma: no cover - SmartNoise only reads the relation it was given
            raise StockadeError("SmartNoise read a table it was not given")
    for window in list(tree.find_all(exp.Window)):
        if window.args.get("order") is not None and window.args["order"].find(exp.Rand):
            _random_one_level_down(window)
    for alias in tree.find_all(exp.Alias):
        if alias.alias == "keycount" and isinstance(alias.this, exp.Count) \
                and isinstance(alias.this.this, exp.Distinct):
            alias.set("this", exp.Count(this=exp.Star()))
    return tree.sql(dialect="duckdb")


def duckdb_sql(smartnoise_sql: str, relation_sql: str) -> str:
    """SmartNoise's SQL over ``dp.rel``, rewritten for DuckDB (see the module doc)."""
    key = (smartnoise_sql, relation_sql)
    with _translated_lock:
        found = _translated.get(key)
        if found is not None:
            _translated.move_to_end(key)
            return found
    result = _rewrite(smartnoise_sql, relation_sql)
    with _translated_lock:
        _translated[key] = result
        while len(_translated) > 1024:
            _translated.popitem(last=False)
    return result


class DuckDBReader(SqlReader):  # type: ignore[misc]
    """A SmartNoise reader that runs its SQL on the relation through ``run``."""

    ENGINE = SnEngine.POSTGRES

    def __init__(self, run: Runner, relation_sql: str) -> None:
        super().__init__(self.ENGINE)
        self._run = run
        self.relation_sql = relation_sql
        self.executed: list[str] = []

    @property
    def engine(self) -> str:
        return str(self.ENGINE)

    def execute(self, query: str, *ignore: Any, accuracy: bool = False) -> list[Any]:
        if not isinstance(query, str):
            raise ValueError("DuckDBReader.execute takes SQL text")
        sql = duckdb_sql(query, self.relation_sql)
        self.executed.append(sql)
        names, rows = self._run(sql)
        return [tuple(names), *rows]
