"""DuckDB database files, attached read-only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors._sql import identifier, string_literal
from connectors.base import SourcePlan
from connectors.files import resolve_path
from gateway.errors import ConnectorError


@dataclass(frozen=True)
class DuckDBFileConnector:
    """``{format: duckdb, path: FILE.duckdb, table: [SCHEMA.]NAME}``."""

    format: str = "duckdb"
    help: str = "a table of a DuckDB database file, attached read-only"

    def plan(self, source: Mapping[str, Any], *, base_dir: Path, alias: str) -> SourcePlan:
        path, is_glob = resolve_path(source, base_dir)
        if is_glob:
            raise ConnectorError("A DuckDB source needs one file, not a glob")
        table = source.get("table")
        if not isinstance(table, str) or not table:
            raise ConnectorError(f"DuckDB source '{path}' needs 'table: [SCHEMA.]NAME'")
        schema, _, name = table.rpartition(".")
        qualified = ".".join(identifier(p) for p in (alias, schema or "main", name))
        return SourcePlan(
            setup=(f"ATTACH {string_literal(path)} AS {identifier(alias)} (READ_ONLY)",),
            select=f"SELECT * FROM {qualified}",
            description=f"{path}:{table}",
            content=(path, path + ".wal"),  # a write not yet checkpointed is in its WAL
        )


DUCKDB = DuckDBFileConnector()
