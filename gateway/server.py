"""The domain gateway's Flight SQL server: the protocol layer bound to a Domain."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from gateway.auth import AuthMiddlewareFactory, NoOpHandshake
from gateway.domain import Domain, parameter_values
from gateway.errors import AuthenticationError
from gateway.flightsql.schemas import annotate_schema, like_match
from gateway.flightsql.server import FlightSqlServer, TableInfo
from policy.principal import Principal

log = logging.getLogger("stockade.server")

AUTH = "auth"


class DomainServer(FlightSqlServer):
    """Answers Flight SQL for one :class:`Domain`, as the authenticated principal."""

    def __init__(
        self,
        domain: Domain,
        location: str,
        *,
        token_ttl_s: int = 3600,
        max_batch_bytes: int = 4 * 1024 * 1024,
        tls_certificates: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.domain = domain
        factory = AuthMiddlewareFactory(
            domain.store, domain.principal_for, token_ttl_s=token_ttl_s
        )
        kwargs: dict[str, Any] = {"auth_handler": NoOpHandshake(), "middleware": {AUTH: factory}}
        if tls_certificates:
            kwargs["tls_certificates"] = list(tls_certificates)
        super().__init__(location, max_batch_bytes=max_batch_bytes, **kwargs)

    # -- identity -------------------------------------------------------------------

    def principal(self, context: flight.ServerCallContext) -> Principal:
        middleware = context.get_middleware(AUTH)
        if middleware is None or middleware.principal is None:
            raise AuthenticationError("Authentication required: connect with a user name "
                                      "and password.")
        principal: Principal = middleware.principal
        return principal

    def session_owner(self, context: flight.ServerCallContext) -> str:
        return self.principal(context).user

    # -- metadata -------------------------------------------------------------------

    def sql_info(self) -> dict[int, object]:
        info = dict(super().sql_info())
        return info

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
        for table in self.domain.catalog(principal):
            if schema_pattern is not None and not like_match(schema_pattern, table.dataset):
                continue
            if table_pattern is not None and not like_match(table_pattern, table.name):
                continue
            schema = annotate_schema(
                table.schema, catalog=self.domain.name, db_schema=table.dataset,
                table=table.name, type_names=self.domain.schemas.get((table.dataset, table.name)),
            )
            out.append(TableInfo(self.domain.name, table.dataset, table.name, "TABLE", schema))
        return out

    def table_types(self, context: flight.ServerCallContext) -> Sequence[str]:
        return ["TABLE"]

    # -- queries --------------------------------------------------------------------

    def query_schema(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.Schema:
        return self.domain.result_schema(
            self.principal(context), query, parameter_values(parameters)
        )

    def parameter_schema(self, context: flight.ServerCallContext, query: str) -> pa.Schema:
        return self.domain.parameter_schema(self.principal(context), query)

    def execute_query(
        self, context: flight.ServerCallContext, query: str, parameters: pa.RecordBatch | None
    ) -> pa.RecordBatchReader:
        return self.domain.execute(self.principal(context), query, parameter_values(parameters))
