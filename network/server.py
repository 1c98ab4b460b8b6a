"""The network node's Flight SQL server: many domains behind one endpoint.

:class:`NetworkServer` is a :class:`gateway.flightsql.server.FlightSqlServer`
(the protocol layer the domain gateway uses) whose hooks ask the domains:

- catalogs: each configured domain, and ``federated``; schemas and tables: what
  each domain shows the calling analyst (:mod:`network.catalog`);
- a query naming one domain (``st_marys.oncology.screenings``) is routed there
  with the catalog taken out, in the analyst's dialect, with their ε and δ
  (:mod:`network.routing`), and the domain's answer streams back unchanged;
- a query on ``federated.DATASET.TABLE`` runs on every domain that holds the
  table and the answers are merged (:mod:`network.fanout`);
- actions ``stockade.network.status`` (domains, their URLs and health) and
  ``stockade.search`` (:mod:`network.search`).

Every call needs a login (:mod:`network.auth`), metadata and ListActions
included, but one: the action ``stockade.network.health``, a probe for load
balancers that answers ``{"status": "ok"}`` to anyone and says nothing else.

A ``dp`` domain computes and charges its answer at GetFlightInfo and keeps it
for the DoGet that follows. The network does the same: at GetFlightInfo it asks
the domain (or, federated, every holder) and keeps what it got, per session and
query, for the client's DoGet (a short LRU); a DoGet without it asks again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from sqlglot import exp

from gateway.dialects import DIALECT_OPTION, EPSILON_OPTION, check_dialect, check_epsilon
from gateway.errors import InputError, NotSupportedError, TableNotFoundError
from gateway.flightsql.server import FlightSqlServer, SessionValue, TableInfo, json_body
from gateway.policy_state import LruCache
from network import search
from network.auth import NetworkAuthFactory, NetworkSession, Sessions, headers_of, session_of
from network.catalog import Catalogs, federated_tables
from network.config import FEDERATED, NetworkConfig
from network.domains import DomainLink, RoutedAnswer
from network.fanout import Federation
from network.federate import FederatedPlan, plan_federated
from network.health import HealthMonitor
from network.options import (
    PARTIAL_OPTION,
    QueryOptions,
    Resolved,
    as_bool,
    parse_options,
    resolve,
)
from network.routing import Target, route
from policy.rules.parse import parse

log = logging.getLogger("stockade.network")

AUTH = "auth"
SESSION_OPTIONS = (DIALECT_OPTION, EPSILON_OPTION, PARTIAL_OPTION)
STATUS_ACTION = "stockade.network.status"
HEALTH_ACTION = "stockade.network.health"
HEALTH_ANSWER = b'{"status": "ok"}'
SEARCH_ACTION = "stockade.search"


@functools.lru_cache(maxsize=1024)
def _federated_plan(sql: str, dialect: str) -> FederatedPlan:
    """A federated query's plan: a pure function of its text, so planned once (ADBC asks
    for the schema at prepare, then for the answer)."""
    return plan_federated(sql, dialect=dialect)


class NetworkServer(FlightSqlServer):
    """A Flight SQL server in front of the domains of ``config``."""

    def __init__(
        self,
        config: NetworkConfig,
        location: str,
        *,
        max_batch_bytes: int = 4 * 1024 * 1024,
        tls_certificates: Sequence[tuple[bytes, bytes]] | None = None,
        start_health: bool = True,
    ) -> None:
        from gateway.auth import NoOpHandshake

        self.config = config
        settings = config.settings
        self.links = {d.name: DomainLink(d) for d in config.domains}
        self.health = HealthMonitor(self.links, settings.health_interval_s)
        self.pool = ThreadPoolExecutor(max_workers=settings.max_parallel,
                                       thread_name_prefix="network")
        self.sessions = Sessions(self.links, ttl_s=settings.session_ttl_s,
                                 rejection_memory_s=settings.rejection_memory_s,
                                 is_down=self.health.is_down)
        self.catalogs = Catalogs(self.sessions, self.links, cache_s=settings.metadata_cache_s,
                                 pool=self.pool)
        self.federation = Federation(self.sessions, self.catalogs, self.links, self.pool,
                                     is_down=self.health.is_down)
        # (session, query, parameters) -> what GetFlightInfo got, for the DoGet that follows.
        self._answers: LruCache[tuple[str, str, bytes], RoutedAnswer | pa.Table] = LruCache(256)
        self.started_at = time.time()
        kwargs: dict[str, Any] = {"auth_handler": NoOpHandshake(),
                                  "middleware": {AUTH: NetworkAuthFactory(self.sessions)}}
        if tls_certificates:
            kwargs["tls_certificates"] = list(tls_certificates)
        super().__init__(location, max_batch_bytes=max_batch_bytes,
                         max_pattern_length=settings.max_pattern_length,
                         limits=settings.request_limits, **kwargs)
        if start_health:
            self.health.start()

    def shutdown(self) -> None:
        super().shutdown()
        self.sessions.shutdown()
        self.health.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for link in self.links.values():
            link.close()

    # -- who ----------------------------------------------------------------------------

    def session(self, context: flight.ServerCallContext) -> NetworkSession:
        return session_of(context, AUTH)

    def session_owner(self, context: flight.ServerCallContext) -> str:
        return self.session(context).id

    def check_caller(self, context: flight.ServerCallContext, action_type: str | None = None
                     ) -> None:
        """Every call needs a login, but the health probe."""
        if action_type != HEALTH_ACTION:
            self.session(context)

    def options(self, context: flight.ServerCallContext, sql: str
                ) -> tuple[Resolved, QueryOptions]:
        """The query's options in force, and its options comment."""
        parsed = parse_options(sql)
        resolved = resolve(parsed, self.session(context).options, headers_of(context, AUTH))
        return resolved, parsed

    # -- sessions -----------------------------------------------------------------------

    def set_session_options(
        self, context: flight.ServerCallContext, options: Mapping[str, SessionValue]
    ) -> Mapping[str, str]:
        session = self.session(context)
        refused: dict[str, str] = {}
        for name, value in options.items():
            if name not in SESSION_OPTIONS:
                refused[name] = "invalid_name"
            elif value is None:
                session.options.pop(name, None)
            elif name == EPSILON_OPTION:
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    raise InputError(f"Session option '{name}' takes a number, e.g. 0.5")
                session.options[name] = str(check_epsilon(value))
            elif name == PARTIAL_OPTION:
                if not isinstance(value, str | bool | int):
                    raise InputError(f"Session option '{name}' takes true or false")
                session.options[name] = as_bool(value, name)
            elif not isinstance(value, str):
                raise InputError(f"Session option '{name}' takes a dialect name, e.g. 'postgres'")
            else:
                session.options[name] = check_dialect(value)
        return refused

    def get_session_options(self, context: flight.ServerCallContext) -> Mapping[str, SessionValue]:
        return dict(self.session(context).options)

    def close_session(self, context: flight.ServerCallContext) -> None:
        self.sessions.close(self.session(context))

    # -- metadata -----------------------------------------------------------------------

    def list_catalogs(self, context: flight.ServerCallContext) -> Sequence[str]:
        self.session(context)
        return [*self.links, FEDERATED]

    def _catalog_tables(self, context: flight.ServerCallContext, catalog: str | None
                ) -> list[TableInfo]:
        """The tables of ``catalog`` (every catalog if None).

        Asking for one domain's catalog raises that domain's error (it is down, it
        refuses the analyst...); listing every catalog leaves failing domains out.
        """
        session = self.session(context)
        if catalog is not None and catalog in self.links:
            return self.catalogs.tables(session, catalog)
        if catalog not in (None, FEDERATED):
            return []
        found, failed = self.catalogs.gather(session)
        for name, error in failed.items():
            log.info("catalog of %s left out for %s: %s", name, session.user, error.message)
        federated = federated_tables(found)
        if catalog == FEDERATED:
            return federated
        return [t for name in self.links for t in found.get(name, [])] + federated

    def list_schemas(
        self, context: flight.ServerCallContext, catalog: str | None, schema_pattern: str | None
    ) -> Sequence[tuple[str, str]]:
        tables = self._catalog_tables(context, catalog)
        return sorted({(t.catalog or "", t.db_schema or "") for t in tables})

    def list_tables(
        self,
        context: flight.ServerCallContext,
        catalog: str | None,
        schema_pattern: str | None,
        table_pattern: str | None,
        table_types: Sequence[str],
    ) -> Sequence[TableInfo]:
        return self._catalog_tables(context, catalog)

    def table_types(self, context: flight.ServerCallContext) -> Sequence[str]:
        return ["TABLE"]

    # -- queries ------------------------------------------------------------------------

    def _target(self, context: flight.ServerCallContext, query: str
                ) -> tuple[Target, Resolved]:
        resolved, parsed = self.options(context, query)
        target = route(parsed.blank, resolved.dialect, list(self.links),
                       for_domain=parsed.for_domain, limits=self.limits)
        return target, resolved

    @staticmethod
    def _domain_headers(resolved: Resolved) -> list[tuple[bytes, bytes]]:
        """The analyst's session-wide dialect and ε, as call headers for the domain."""
        headers = [(b"x-stockade-dialect", resolved.dialect.encode())]
        if resolved.epsilon is not None:
            headers.append((b"x-stockade-epsilon", repr(resolved.epsilon).encode()))
        return headers

    @staticmethod
    def _plan(target: Target, resolved: Resolved) -> FederatedPlan:
        return _federated_plan(target.sql, resolved.dialect)

    def query_schema(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.Schema:
        session = self.session(context)
        target, resolved = self._target(context, query)
        if target.catalog == FEDERATED:
            return self.federation.schema(session, self._plan(target, resolved), resolved)
        link = self._link(target.catalog)
        headers = self._domain_headers(resolved)
        return self.sessions.call(session, link,
                                  lambda token: link.query_schema(token, target.sql, headers))

    def parameter_schema(self, context: flight.ServerCallContext, query: str) -> pa.Schema:
        target, resolved = self._target(context, query)
        if target.catalog == FEDERATED or not _has_placeholders(target.sql, resolved.dialect):
            return pa.schema([])
        link = self._link(target.catalog)
        headers = self._domain_headers(resolved)
        return self.sessions.call(
            self.session(context), link,
            lambda token: link.parameter_schema(token, target.sql, headers))

    def _answer(self, context: flight.ServerCallContext, query: str,
                parameters: pa.RecordBatch | None) -> RoutedAnswer | pa.Table:
        """Ask the domain(s): a routed statement's FlightInfo, or a federated answer."""
        session = self.session(context)
        target, resolved = self._target(context, query)
        if target.catalog == FEDERATED:
            if parameters is not None and parameters.num_columns:
                raise NotSupportedError("Federated queries take no parameters: write the "
                                        "values in the SQL")
            return self.federation.run(session, self._plan(target, resolved), resolved)
        link = self._link(target.catalog)
        headers = self._domain_headers(resolved)
        return self.sessions.call(
            session, link, lambda token: link.statement(token, target.sql, headers, parameters))

    def _key(self, context: flight.ServerCallContext, query: str,
             parameters: pa.RecordBatch | None) -> tuple[str, str, bytes]:
        params = b""
        if parameters is not None and parameters.num_columns:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, parameters.schema) as writer:
                writer.write_batch(parameters)
            params = hashlib.sha256(sink.getvalue().to_pybytes()).digest()
        return (self.session(context).id, query, params)

    def execution_schema(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.Schema:
        answer = self._answer(context, query, parameters)
        self._answers.put(self._key(context, query, parameters), answer)
        return answer.schema

    def execute_query(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.RecordBatchReader:
        answer = self._answers.pop(self._key(context, query, parameters))
        if answer is None:
            answer = self._answer(context, query, parameters)
        if isinstance(answer, pa.Table):
            return pa.RecordBatchReader.from_batches(answer.schema, answer.to_batches())
        return answer.stream()

    def _link(self, name: str) -> DomainLink:
        link = self.links.get(name)
        if link is None:  # route() only returns configured names
            raise TableNotFoundError(name, candidates=self.links)
        return link

    # -- actions ------------------------------------------------------------------------

    def custom_actions(self) -> Sequence[tuple[str, str]]:
        return [
            (STATUS_ACTION, "The network's domains, their URLs and health"),
            (HEALTH_ACTION, 'A health probe: {"status": "ok"} (no login needed)'),
            (SEARCH_ACTION, 'Find datasets across the domains: {"term": "cancer"}'),
        ]

    def custom_action(
        self, context: flight.ServerCallContext, action_type: str, body: bytes
    ) -> Iterable[bytes]:
        if action_type == HEALTH_ACTION:
            return [HEALTH_ANSWER]
        if action_type == STATUS_ACTION:
            self.session(context)
            return [json.dumps(self.status()).encode()]
        if action_type == SEARCH_ACTION:
            session = self.session(context)
            request = json_body(body)
            term = request.get("term")
            if not isinstance(term, str):
                raise InputError('stockade.search takes {"term": "…"}')
            fetchers = {name: _catalog_fetcher(self.sessions, session, link)
                        for name, link in self.links.items()}
            result = search.answer(term, fetchers, max_parallel=self.config.settings.max_parallel)
            return [json.dumps(result).encode()]
        self.session(context)
        return super().custom_action(context, action_type, body)

    def status(self) -> dict[str, Any]:
        """The network and each domain's health (``stockade.network.status``)."""
        health = self.health.snapshot()
        return {
            "network": self.config.name,
            "description": self.config.description,
            "started_at": self.started_at,
            "health_interval_s": self.config.settings.health_interval_s,
            "domains": [
                {"name": name, "url": link.url, "timeout_s": link.timeout_s,
                 **health[name].to_json()}
                for name, link in self.links.items()
            ],
        }


def _catalog_fetcher(sessions: Sessions, session: NetworkSession, link: DomainLink) -> Any:
    return lambda: sessions.call(session, link,
                                 lambda token: link.action(token, search.CATALOG_ACTION, {}))


def _has_placeholders(sql: str, dialect: str) -> bool:
    try:
        return parse(sql, dialect=dialect).find(exp.Placeholder) is not None
    except InputError:
        return False
