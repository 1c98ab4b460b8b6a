"""What the network shows an analyst: each domain's tables, and the federated catalog.

A domain's tables are what that domain shows *the analyst* (GetTables with
schemas, asked with the analyst's token), cached for ``metadata_cache_s`` per
domain and user. The virtual catalog ``federated`` lists each DATASET.TABLE that
at least one domain shows the analyst, with the columns that every such domain
has with types of one kind (:mod:`network.compat`).

>>> a = TableInfo("a", "onc", "s", "TABLE", pa.schema([("site", pa.string()), ("age", pa.int32())]))
>>> b = TableInfo("b", "onc", "s", "TABLE", pa.schema([("age", pa.float64()), ("x", pa.int8())]))
>>> (t,) = federated_tables({"a": [a], "b": [b]})
>>> t.catalog, t.db_schema, t.name, t.schema.names, t.schema.field("age").type
('federated', 'onc', 's', ['age'], DataType(double))
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from gateway.errors import StockadeError
from gateway.flightsql.server import TableInfo
from network.auth import NetworkSession, Sessions
from network.compat import common_type, kind
from network.config import FEDERATED
from network.domains import DomainLink


class Catalogs:
    """Each domain's tables as the analyst sees them, fetched in parallel and cached."""

    def __init__(self, sessions: Sessions, links: Mapping[str, DomainLink], *,
                 cache_s: float, pool: ThreadPoolExecutor) -> None:
        self.sessions = sessions
        self.links = dict(links)
        self.cache_s = cache_s
        self.pool = pool
        self._cache: dict[tuple[str, str], tuple[float, list[TableInfo]]] = {}
        self._lock = threading.Lock()

    def tables(self, session: NetworkSession, name: str, *, fresh: bool = False
               ) -> list[TableInfo]:
        """The tables domain ``name`` shows the analyst; raises the domain's error.

        ``fresh`` asks the domain even when its answer is cached.
        """
        link = self.links[name]
        self.sessions.token(session, link)  # the domain must accept this analyst first
        key = (name, session.user.lower())
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        found = self.sessions.call(session, link, link.tables)
        with self._lock:
            self._cache[key] = (now + self.cache_s, found)
            if len(self._cache) > 10_000:
                for old in [k for k, v in self._cache.items() if v[0] <= now]:
                    del self._cache[old]
        return found

    def gather(self, session: NetworkSession, names: Sequence[str] | None = None, *,
               fresh: Callable[[str], bool] = lambda name: False,
               ) -> tuple[dict[str, list[TableInfo]], dict[str, StockadeError]]:
        """The tables of ``names`` (default: every domain), in parallel; and who failed.

        ``fresh(name)`` says whether to ask domain ``name`` even if its answer is cached.
        """
        names = list(self.links) if names is None else list(names)
        futures = {n: self.pool.submit(self.tables, session, n, fresh=fresh(n)) for n in names}
        found: dict[str, list[TableInfo]] = {}
        failed: dict[str, StockadeError] = {}
        for name, future in futures.items():
            try:
                found[name] = future.result()
            except StockadeError as exc:
                failed[name] = exc
        return found, failed


def federated_tables(by_domain: Mapping[str, Sequence[TableInfo]]) -> list[TableInfo]:
    """The ``federated`` catalog's tables, from each domain's tables."""
    holders: dict[tuple[str, str], list[TableInfo]] = {}
    for tables in by_domain.values():
        for t in tables:
            holders.setdefault((t.db_schema or "", t.name), []).append(t)
    out = []
    for (dataset, table), infos in sorted(holders.items()):
        fields = []
        for field in infos[0].schema:
            types = [_field(info.schema, field.name) for info in infos]
            if any(t is None for t in types):
                continue
            common = common_type([t.type for t in types if t is not None])
            if common is not None:
                fields.append(pa.field(field.name, common))
        out.append(TableInfo(FEDERATED, dataset, table, "TABLE", pa.schema(fields)))
    return out


def _field(schema: pa.Schema, name: str) -> pa.Field | None:
    lowered = name.lower()
    for field in schema:
        if field.name.lower() == lowered:
            return field
    return None


@dataclass(frozen=True)
class Holders:
    """The domains a federated query runs on, and why the others are left out."""

    domains: list[str]
    absent: dict[str, str]  # domain → why it does not take part


def holders(by_domain: Mapping[str, Sequence[TableInfo]], dataset: str, table: str,
            columns: Sequence[str]) -> Holders:
    """The domains that hold ``dataset.table`` with ``columns`` of one kind each.

    When domains disagree on a column's kind, the kind most of them have wins
    (the first domain's on a tie) and the others are left out, with the reason.

    >>> a = TableInfo("a", "d", "t", "TABLE", pa.schema([("x", pa.int32())]))
    >>> b = TableInfo("b", "d", "t", "TABLE", pa.schema([("x", pa.string())]))
    >>> c = TableInfo("c", "d", "t", "TABLE", pa.schema([("y", pa.int32())]))
    >>> h = holders({"a": [a], "b": [b], "c": [c], "e": []}, "d", "t", ["x"])
    >>> h.domains, sorted(h.absent)
    (['a'], ['b', 'c', 'e'])
    >>> h.absent["c"]
    "table 'd.t' has no column 'x' here"
    """
    candidates: dict[str, pa.Schema] = {}
    absent: dict[str, str] = {}
    for name, tables in by_domain.items():
        info = next((t for t in tables if (t.db_schema or "").lower() == dataset.lower()
                     and t.name.lower() == table.lower()), None)
        if info is None:
            absent[name] = f"no table '{dataset}.{table}' here (or you may not read it)"
            continue
        missing = [c for c in columns if _field(info.schema, c) is None]
        if missing:
            absent[name] = f"table '{dataset}.{table}' has no column '{missing[0]}' here"
            continue
        candidates[name] = info.schema
    for column in columns:
        kinds = {n: kind(_field(s, column).type)  # type: ignore[union-attr]
                 for n, s in candidates.items()}
        if len(set(kinds.values())) <= 1:
            continue
        counts = Counter(kinds.values())
        top = max(counts.values())
        winner = next(k for k in kinds.values() if counts[k] == top)
        for n, k in kinds.items():
            if k != winner:
                absent[n] = (f"column '{column}' is of kind {k} here but {winner} in "
                             "the other domains")
                del candidates[n]
    return Holders(list(candidates), absent)
