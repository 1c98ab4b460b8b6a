"""The domain gateway's Flight SQL server: the protocol layer bound to a Domain.

Sessions: Flight SQL session options are kept per login (see
:attr:`gateway.auth.AuthMiddleware.session_id`), so a client that logs in once per
connection, as ADBC and JDBC do, has one session per connection without cookies.
The options are ``stockade.dialect`` and ``stockade.epsilon`` (:mod:`gateway.dialects`).

Actions beyond Flight SQL (JSON bodies and results):

- ``stockade.cost`` ``{"query": SQL}`` → the ε/δ a ``dp`` query would cost, and what is
  left, without charging anything;
- ``stockade.budget`` ``{}`` → the caller's ε/δ budget per ``dp`` dataset;
- the analyst and owner actions of :mod:`gateway.admin` (``docs/api.md``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from gateway import admin
from gateway.auth import AuthMiddleware, AuthMiddlewareFactory, NoOpHandshake
from gateway.dialects import (
    DIALECT_OPTION,
    DP_PARTS_HEADER,
    EPSILON_OPTION,
    check_dialect,
    check_epsilon,
    check_flag,
)
from gateway.domain import Domain, LruCache
from gateway.errors import AuthenticationError, InputError
from gateway.flightsql.like import DEFAULT_MAX_PATTERN_LENGTH, like_match
from gateway.flightsql.schemas import annotate_schema
from gateway.flightsql.server import FlightSqlServer, SessionValue, TableInfo, json_body
from gateway.limits import RequestLimits
from gateway.parameters import Parameters
from policy.principal import Principal

log = logging.getLogger("stockade.server")

AUTH = "auth"
#: Session options the gateway knows.
SESSION_OPTIONS = (DIALECT_OPTION, EPSILON_OPTION)


class DomainServer(FlightSqlServer):
    """Answers Flight SQL for one :class:`Domain`, as the authenticated principal."""

    def __init__(
        self,
        domain: Domain,
        location: str,
        *,
        token_ttl_s: int = 3600,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_pattern_length: int = DEFAULT_MAX_PATTERN_LENGTH,
        tls_certificates: Sequence[tuple[bytes, bytes]] | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.domain = domain
        factory = AuthMiddlewareFactory(
            domain.store, domain.principal_for, token_ttl_s=token_ttl_s,
            on_login_failure=domain.audit.login_failure,
        )
        kwargs: dict[str, Any] = {"auth_handler": NoOpHandshake(), "middleware": {AUTH: factory}}
        if tls_certificates:
            kwargs["tls_certificates"] = list(tls_certificates)
        super().__init__(location, max_batch_bytes=max_batch_bytes,
                         max_pattern_length=max_pattern_length,
                         limits=limits or domain.state.limits, **kwargs)
        # (user, session id) -> that session's options; bounded, oldest forgotten first.
        self._sessions: LruCache[tuple[str, str], dict[str, SessionValue]] = LruCache(10_000)

    # -- identity -------------------------------------------------------------------

    def _middleware(self, context: flight.ServerCallContext) -> AuthMiddleware:
        """The caller's middleware, its login checked (with the client's address if deferred)."""
        middleware = context.get_middleware(AUTH)
        if not isinstance(middleware, AuthMiddleware):
            raise AuthenticationError("Authentication required: connect with a user name "
                                      "and password.")
        middleware.verify(context.peer())
        return middleware

    def check_caller(self, context: flight.ServerCallContext, action_type: str | None = None
                     ) -> None:
        """Every call needs a login (the middleware refuses calls without credentials)."""
        self._middleware(context)

    def principal(self, context: flight.ServerCallContext) -> Principal:
        return self._middleware(context).principal

    def session_owner(self, context: flight.ServerCallContext) -> str:
        return self.principal(context).user

    # -- sessions -------------------------------------------------------------------

    def _session_key(self, context: flight.ServerCallContext) -> tuple[str, str] | None:
        middleware = self._middleware(context)
        if middleware.session_id is None:
            return None
        return (middleware.user.name, middleware.session_id)

    def set_session_options(
        self, context: flight.ServerCallContext, options: Mapping[str, SessionValue]
    ) -> Mapping[str, str]:
        key = self._session_key(context)
        session = dict(self._sessions.get(key) or {}) if key else {}
        refused: dict[str, str] = {}
        for name, value in options.items():
            if name not in SESSION_OPTIONS:
                refused[name] = "invalid_name"
            elif value is None:
                session.pop(name, None)
            elif name == EPSILON_OPTION:
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    raise InputError(f"Session option '{name}' takes a number, e.g. 0.5")
                session[name] = str(check_epsilon(value))
            elif not isinstance(value, str):
                raise InputError(f"Session option '{name}' takes a dialect name, e.g. 'postgres'")
            else:
                session[name] = check_dialect(value)
        if key is not None:
            self._sessions.put(key, session)
        return refused

    def get_session_options(self, context: flight.ServerCallContext) -> Mapping[str, SessionValue]:
        key = self._session_key(context)
        return dict(self._sessions.get(key) or {}) if key else {}

    def close_session(self, context: flight.ServerCallContext) -> None:
        key = self._session_key(context)
        if key is not None:
            self._sessions.pop(key)

    def dialect(self, context: flight.ServerCallContext) -> str | None:
        """The caller's dialect: the session's, else the connection header's, else none."""
        session = self.get_session_options(context).get(DIALECT_OPTION)
        if isinstance(session, str):
            return session
        return self._middleware(context).dialect

    def epsilon(self, context: flight.ServerCallContext) -> float | None:
        """The caller's per-query ε for dp tables: the session's, else the header's."""
        session = self.get_session_options(context).get(EPSILON_OPTION)
        if session is not None:
            return check_epsilon(session)
        header = self._middleware(context).epsilon
        return check_epsilon(header) if header is not None else None

    def dp_parts(self, context: flight.ServerCallContext) -> bool:
        """Whether the caller asked for a dp answer's parts unclamped (a network node
        merging domains sends ``x-stockade-dp-parts: true``)."""
        header = self._middleware(context).dp_parts
        return check_flag(header, what=DP_PARTS_HEADER) if header is not None else False

    # -- actions ----------------------------------------------------------------------

    def custom_actions(self) -> Sequence[tuple[str, str]]:
        return [
            ("stockade.cost", "The ε/δ a dp query would cost, without charging: "
                              '{"query": SQL}'),
            ("stockade.budget", "Your ε/δ budget per dp dataset"),
            *admin.action_list(),
        ]

    def custom_action(
        self, context: flight.ServerCallContext, action_type: str, body: bytes
    ) -> Iterable[bytes]:
        principal = self.principal(context)
        if action_type == "stockade.cost":
            request = json_body(body)
            query = request.get("query")
            if not isinstance(query, str):
                raise InputError('stockade.cost takes {"query": "SELECT …"}')
            epsilon = request.get("epsilon")
            result = self.domain.dp_cost(
                principal, query, dialect=self.dialect(context),
                epsilon=check_epsilon(epsilon) if epsilon is not None else self.epsilon(context),
            )
            return [json.dumps(result).encode()]
        if action_type == "stockade.budget":
            return [json.dumps(self.domain.budgets(principal)).encode()]
        if action_type.startswith("stockade."):
            return [json.dumps(admin.run(self.domain, principal, action_type, body)).encode()]
        return super().custom_action(context, action_type, body)

    # -- metadata -------------------------------------------------------------------

    def list_catalogs(self, context: flight.ServerCallContext) -> Sequence[str]:
        self.principal(context)
        return [self.domain.name]

    def list_schemas(
        self, context: flight.ServerCallContext, catalog: str | None, schema_pattern: str | None
    ) -> Sequence[tuple[str, str]]:
        principal = self.principal(context)
        if catalog not in (None, self.domain.name):
            return []
        datasets = sorted({t.dataset for t in self.domain.catalog(principal)})
        return [
            (self.domain.name, ds) for ds in datasets
            if schema_pattern is None or like_match(schema_pattern, ds)
        ]

    def list_tables(
        self,
        context: flight.ServerCallContext,
        catalog: str | None,
        schema_pattern: str | None,
        table_pattern: str | None,
        table_types: Sequence[str],
    ) -> Sequence[TableInfo]:
        principal = self.principal(context)
        if catalog not in (None, self.domain.name):
            return []
        if table_types and "TABLE" not in table_types:
            return []
        out = []
        # One policy version for the catalog and its source type names, even mid-swap.
        with self.domain.pinned() as state:
            for table in state.catalog(principal):
                if schema_pattern is not None and not like_match(schema_pattern, table.dataset):
                    continue
                if table_pattern is not None and not like_match(table_pattern, table.name):
                    continue
                schema = annotate_schema(
                    table.schema, catalog=self.domain.name, db_schema=table.dataset,
                    table=table.name, type_names=state.schemas.get((table.dataset, table.name)),
                )
                out.append(TableInfo(self.domain.name, table.dataset, table.name, "TABLE",
                                     schema))
        return out

    def table_types(self, context: flight.ServerCallContext) -> Sequence[str]:
        return ["TABLE"]

    # -- queries --------------------------------------------------------------------

    def query_schema(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.Schema:
        return self.domain.result_schema(
            self.principal(context), query, Parameters.of(parameters),
            dialect=self.dialect(context), epsilon=self.epsilon(context),
            unclamped=self.dp_parts(context),
        )

    def execution_schema(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.Schema:
        return self.domain.answer_schema(
            self.principal(context), query, Parameters.of(parameters),
            dialect=self.dialect(context), epsilon=self.epsilon(context),
            unclamped=self.dp_parts(context),
        )

    def parameter_schema(self, context: flight.ServerCallContext, query: str) -> pa.Schema:
        return self.domain.parameter_schema(
            self.principal(context), query, dialect=self.dialect(context)
        )

    def execute_query(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.RecordBatchReader:
        return self.domain.execute(
            self.principal(context), query, Parameters.of(parameters),
            dialect=self.dialect(context), epsilon=self.epsilon(context),
            unclamped=self.dp_parts(context),
        )
