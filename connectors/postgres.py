"""PostgreSQL tables and queries, read through DuckDB's postgres scanner.

``{format: postgres, dsn: {"$env": PG_DSN}, table: SCHEMA.TABLE}`` (or
``query: SELECT ...`` instead of ``table``). The engine loads the
``postgres_scanner`` extension from its pip wheel
(``duckdb-extension-postgres-scanner``) and attaches the database with
``ATTACH ... (TYPE postgres, READ_ONLY)`` before it is locked down. The locked
engine keeps ``enable_external_access = false``: the already attached database
stays readable (the extension's own network connections are not DuckDB file
access), while analyst SQL can neither attach another database nor open files;
table functions (``postgres_scan``, ``postgres_query``) are refused by the
policy's function rules before SQL reaches the engine.

Filters and projections on a ``table`` source are pushed down to PostgreSQL
(``EXPLAIN`` shows them on the ``POSTGRES_SCAN`` operator); a ``query`` source
runs the owner's query as written, and filters apply to its result.

The DSN (and its password) never appears in an error, the status or the log:
the connector hands them to the engine as secrets, which replaces them with the
table's name, and describes the source as ``postgres SCHEMA.TABLE``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from connectors._sql import identifier, string_literal
from connectors.base import SourcePlan
from gateway.errors import ConnectorError

EXTENSION = "postgres_scanner"
_KEY_VALUE_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The DSN and the password inside it: text never to show.

    >>> dsn_secrets("postgresql://u:s3cret@db:5432/h")
    ('postgresql://u:s3cret@db:5432/h', 's3cret')
    >>> dsn_secrets("host=db user=u password='p w' dbname=h")
    ("host=db user=u password='p w' dbname=h", 'p w')
    >>> dsn_secrets("host=db dbname=h")
    ('host=db dbname=h',)
    """
    secrets = [dsn]
    password: str | None = None
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        password = unquote(password) if password else None
        raw = dsn.split("://", 1)[1].split("@", 1)
        if len(raw) == 2 and ":" in raw[0]:
            encoded = raw[0].split(":", 1)[1]
            if encoded and encoded != password:
                secrets.append(encoded)
    else:
        match = _KEY_VALUE_PASSWORD.search(dsn)
        if match:
            password = match.group(1)
            if password.startswith("'"):
                password = password[1:-1].replace("\\'", "'")
    if password:
        secrets.insert(1, password)
    return tuple(secrets)


def _qualified(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


@dataclass(frozen=True)
class PostgresConnector:
    """``{format: postgres, dsn: ..., table: [SCHEMA.]TABLE | query: SELECT ...}``."""

    format: str = "postgres"
    help: str = "a table or query of a PostgreSQL database, read-only, filters pushed down"

    def plan(self, source: Mapping[str, Any], *, base_dir: Path, alias: str) -> SourcePlan:
        table = source.get("table")
        query = source.get("query")
        if (table is None) == (query is None):
            raise ConnectorError(
                "A 'postgres' source needs either 'table: SCHEMA.TABLE' or 'query: SELECT ...'"
            )
        dsn = source.get("dsn")
        if not isinstance(dsn, str) or not dsn:
            raise ConnectorError(
                "A 'postgres' source needs a 'dsn' (e.g. {\"$env\": PG_DSN})"
            )
        setup = (
            f"ATTACH {string_literal(dsn)} AS {identifier(alias)} (TYPE postgres, READ_ONLY)",
        )
        if table is not None:
            if not isinstance(table, str) or not table:
                raise ConnectorError("A 'postgres' source's 'table' must be SCHEMA.TABLE")
            schema, name = _qualified(table)
            select = f"SELECT * FROM {identifier(alias)}.{identifier(schema)}.{identifier(name)}"
            description = f"postgres {schema}.{name}"
        else:
            if not isinstance(query, str) or not query.strip():
                raise ConnectorError("A 'postgres' source's 'query' must be a SELECT")
            text = query.strip().rstrip(";")
            select = (f"SELECT * FROM postgres_query({string_literal(alias)}, "
                      f"{string_literal(text)})")
            description = "postgres (query)"
        return SourcePlan(
            setup=setup,
            select=select,
            description=description,
            extensions=(EXTENSION,),
            secrets=dsn_secrets(dsn),
        )


POSTGRES = PostgresConnector()
