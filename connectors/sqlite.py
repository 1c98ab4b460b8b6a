"""SQLite tables, read through DuckDB's sqlite scanner.

``{format: sqlite, path: FILE, table: NAME}``: the engine loads the
``sqlite_scanner`` extension from its pip wheel
(``duckdb-extension-sqlite-scanner``) and attaches the file with
``ATTACH ... (TYPE sqlite, READ_ONLY)`` before it is locked down; the locked
engine may open that one file only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors._sql import identifier, string_literal
from connectors.base import SourcePlan
from connectors.files import resolve_path
from gateway.errors import ConnectorError

EXTENSION = "sqlite_scanner"


@dataclass(frozen=True)
class SQLiteConnector:
    """``{format: sqlite, path: FILE, table: NAME}``."""

    format: str = "sqlite"
    help: str = "a table of a SQLite database file, attached read-only"

    def plan(self, source: Mapping[str, Any], *, base_dir: Path, alias: str) -> SourcePlan:
        path, is_glob = resolve_path(source, base_dir)
        if is_glob:
            raise ConnectorError("A SQLite source needs one file, not a glob")
        table = source.get("table")
        if not isinstance(table, str) or not table:
            raise ConnectorError(f"SQLite source '{path}' needs 'table: NAME'")
        return SourcePlan(
            setup=(f"ATTACH {string_literal(path)} AS {identifier(alias)} "
                   "(TYPE sqlite, READ_ONLY)",),
            select=f"SELECT * FROM {identifier(alias)}.{identifier(table)}",
            allowed_paths=(path,),
            description=f"{path}:{table}",
            extensions=(EXTENSION,),
        )


SQLITE = SQLiteConnector()
