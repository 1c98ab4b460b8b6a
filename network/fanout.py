"""Running one federated query on every domain that holds its table.

The planner (:mod:`network.federate`) splits the analyst's aggregate into parts
each domain can answer; here the parts run, in parallel, on the holders, with
the analyst's credentials and options, and the planner merges the answers. Every
part is asked with ``x-stockade-dp-parts: true``: a dp domain releases its noisy
parts unclamped, and the merge clamps once.

Which domains take part: every domain is asked for its tables (as the analyst
sees them); those that hold the table with the columns the query needs, of
compatible types, take part (:func:`network.catalog.holders`). A domain that
cannot be asked (down, too slow, refusing the analyst) or that fails its part
fails the whole query, with a message naming it; nothing is run anywhere when
that is known before the parts start. With partial results on, the answer
comes from the domains that answered and the schema metadata
``stockade.federated.status`` says, per domain, ``ok``, ``absent: …``,
``unavailable: …``, ``timeout``, ``rejected: …`` or ``error: …``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import pyarrow as pa

from gateway.dialects import DP_PARTS_HEADER
from gateway.errors import (
    AuthenticationError,
    InputError,
    PermissionDeniedError,
    StockadeError,
    TableNotFoundError,
    UnavailableError,
)
from gateway.flightsql.server import TableInfo
from gateway.limits import MAX_ROWS_KEY, TRUNCATED_KEY, truncated_at
from gateway.policy_state import LruCache
from network.auth import NetworkSession, Sessions
from network.catalog import Catalogs, federated_tables, holders
from network.config import FEDERATED
from network.domains import DomainLink, DomainTimeout
from network.options import Resolved

STATUS_KEY = b"stockade.federated.status"
PARTIAL_HINT = (" Ask for the other domains' answer with /* partial_results: true */ "
                "or the session option stockade.partial_results")


class Plan(Protocol):
    """What the network needs of :class:`network.federate.FederatedPlan`."""

    @property
    def dataset(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def columns(self) -> Sequence[str]: ...
    @property
    def domain_sql(self) -> str: ...

    def merge(self, parts: Sequence[tuple[str, pa.Table]]) -> pa.Table: ...


def status_of(exc: StockadeError) -> str:
    """A failed domain's status in ``stockade.federated.status``.

    >>> status_of(DomainTimeout("domain 'a' did not answer within 2 s"))
    'timeout'
    >>> status_of(UnavailableError("domain 'a' is unavailable: refused"))
    "unavailable: domain 'a' is unavailable: refused"
    """
    if isinstance(exc, DomainTimeout):
        return "timeout"
    if isinstance(exc, UnavailableError):
        return f"unavailable: {exc.message}"
    if isinstance(exc, AuthenticationError):
        return f"rejected: {exc.message}"
    return f"error: {exc.message}"


def combined_error(failed: Mapping[str, StockadeError]) -> StockadeError:
    """One error for the domains that failed a query (their messages name them).

    UNAVAILABLE when any domain was down, too slow or failed; else UNAUTHENTICATED
    when one refused the analyst; else the refusal's own kind (a domain's policy
    refusing the part, a budget too small, ...).

    >>> late = DomainTimeout("domain 'a' did not answer within 2 s")
    >>> str(combined_error({"a": late}))  # doctest: +ELLIPSIS
    "domain 'a' did not answer within 2 s. Ask for the other domains' answer with /* ..."
    """
    errors = list(failed.values())
    message = "; ".join(e.message.rstrip(".") for e in errors) + "." + PARTIAL_HINT
    for cls in (UnavailableError, AuthenticationError, PermissionDeniedError, InputError):
        if any(isinstance(e, cls) for e in errors):
            return cls(message)
    return UnavailableError(message)


def domain_sql(plan: Plan, options: Resolved) -> str:
    """The part's SQL as a domain gets it: DuckDB's dialect, the analyst's ε and δ."""
    parts = ["dialect: duckdb"]
    if options.epsilon is not None:
        parts.append(f"epsilon: {options.epsilon!r}")
    if options.delta is not None:
        parts.append(f"delta: {options.delta!r}")
    return f"/* {'; '.join(parts)} */ {plan.domain_sql}"


class Federation:
    """Runs federated queries (and answers their schemas) for one network."""

    def __init__(self, sessions: Sessions, catalogs: Catalogs,
                 links: Mapping[str, DomainLink], pool: ThreadPoolExecutor, *,
                 is_down: Callable[[str], bool] = lambda name: False) -> None:
        self.sessions = sessions
        self.catalogs = catalogs
        self.links = dict(links)
        self.pool = pool
        self.is_down = is_down
        self._schemas: LruCache[tuple[Any, ...], pa.Schema] = LruCache(1024)

    def _participants(self, session: NetworkSession, plan: Plan, partial: bool
                      ) -> tuple[list[str], dict[str, str], dict[str, StockadeError]]:
        """The holders of the plan's table; the status of the others; who failed.

        A domain whose last health check failed is asked afresh (not from the cache),
        so that a domain that is down fails the query before any part runs.
        """
        found, failed = self.catalogs.gather(session, fresh=self.is_down)
        if failed and not partial:
            raise combined_error(_ordered(failed, self.links))
        chosen = holders(found, plan.dataset, plan.table, plan.columns)
        if not chosen.domains and not failed:
            names = [f"{t.db_schema}.{t.name}" for t in federated_tables(found)]
            raise TableNotFoundError(f"{FEDERATED}.{plan.dataset}.{plan.table}",
                                     candidates=[f"{FEDERATED}.{n}" for n in names])
        status = {name: f"absent: {why}" for name, why in chosen.absent.items()}
        return chosen.domains, status, failed

    def run(self, session: NetworkSession, plan: Plan, options: Resolved) -> pa.Table:
        """The merged answer; raises (naming the domains) if any failed and not partial."""
        domains, status, failed = self._participants(session, plan, options.partial)
        sql = domain_sql(plan, options)
        futures = {
            name: self.pool.submit(self.sessions.call, session, self.links[name],
                                   _part(self.links[name], sql))
            for name in domains
        }
        parts: list[tuple[str, pa.Table]] = []
        for name, future in futures.items():
            try:
                parts.append((name, future.result()))
            except StockadeError as exc:
                failed[name] = exc
        if failed and not options.partial:
            raise combined_error(_ordered(failed, self.links))
        for name, error in failed.items():
            status[name] = status_of(error)
        for name, _ in parts:
            status[name] = "ok"
        if not parts:
            raise combined_error(_ordered(failed, self.links)) if failed else \
                UnavailableError("No domain answered the federated query")
        merged = plan.merge(parts)
        return _with_status(merged, {n: status[n] for n in self.links if n in status},
                            cut=[c for _, part in parts if (c := truncated_at(part.schema))])

    def schema(self, session: NetworkSession, plan: Plan, options: Resolved) -> pa.Schema:
        """The answer's schema, without running anything (nothing is charged).

        Each holder gives the schema of its part (GetSchema); the planner merges
        empty parts of those schemas.
        """
        domains, _, failed = self._participants(session, plan, options.partial)
        sql = domain_sql(plan, options)
        futures = {name: self.pool.submit(
            self.sessions.call, session, self.links[name],
            _schema_of(self.links[name], sql)) for name in domains}
        parts = []
        for name, future in futures.items():
            try:
                parts.append((name, future.result().empty_table()))
            except StockadeError as exc:
                failed[name] = exc
        if failed and not options.partial or not parts:
            raise combined_error(_ordered(failed, self.links)) if failed else \
                UnavailableError("No domain could describe the federated query")
        # The merged schema depends only on the plan and the parts' schemas: ADBC asks
        # for it at every prepare, and a merge costs milliseconds.
        key = (sql, tuple((name, part.schema.serialize().to_pybytes()) for name, part in parts))
        cached = self._schemas.get(key)
        if cached is None:
            cached = plan.merge(parts).schema
            self._schemas.put(key, cached)
        return cached


#: Sent with every part: a dp domain releases its noisy parts unclamped, and the merge
#: clamps once (see :mod:`network.federate_merge`).
PART_HEADERS = ((DP_PARTS_HEADER.encode(), b"true"),)


def _part(link: DomainLink, sql: str) -> Any:
    return lambda token: link.table(token, sql, PART_HEADERS)


def _schema_of(link: DomainLink, sql: str) -> Any:
    return lambda token: link.query_schema(token, sql, PART_HEADERS)


def _ordered(failed: Mapping[str, StockadeError], links: Mapping[str, DomainLink]
             ) -> dict[str, StockadeError]:
    return {name: failed[name] for name in links if name in failed}


def _with_status(table: pa.Table, status: Mapping[str, str], *,
                 cut: Sequence[int] = ()) -> pa.Table:
    """``table`` with each domain's status; marked cut if a domain's part was cut.

    >>> t = _with_status(pa.table({"n": [1]}), {"a": "ok", "b": "ok"}, cut=[100, 20])
    >>> truncated_at(t.schema), t.schema.metadata[STATUS_KEY]
    (20, b'{"a": "ok", "b": "ok"}')
    """
    meta = dict(table.schema.metadata or {})
    meta[STATUS_KEY] = json.dumps(dict(status)).encode()
    if cut:
        meta[TRUNCATED_KEY] = b"true"
        meta[MAX_ROWS_KEY] = str(min(cut)).encode()
    return table.replace_schema_metadata(meta)


def federated_listing(catalogs: Catalogs, session: NetworkSession) -> list[TableInfo]:
    """The ``federated`` catalog as this analyst sees it (domains that fail are left out)."""
    found, _ = catalogs.gather(session)
    return federated_tables(found)
