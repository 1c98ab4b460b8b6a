"""File connectors: Parquet, CSV, JSON and Arrow IPC, read by DuckDB.

``path`` is relative to the policy file and may be a glob (``data/*.parquet``);
the locked engine may then open that directory only.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from connectors._sql import string_literal
from connectors.base import SourcePlan
from gateway.errors import ConnectorError

_GLOB_CHARS = set("*?[")
# Policy keys that differ from the DuckDB reader's parameter name.
_PARAMETER = {"json_format": "format"}


def resolve_path(source: Mapping[str, Any], base_dir: Path) -> tuple[str, bool]:
    """Return the absolute path (or glob) of ``source['path']`` and whether it is a glob."""
    raw = source.get("path")
    if not isinstance(raw, str) or not raw:
        raise ConnectorError(f"source of format '{source.get('format')}' needs a 'path'")
    path = Path(raw)
    if not path.is_absolute():
        path = base_dir / path
    text = str(path)
    is_glob = bool(_GLOB_CHARS & set(raw))
    if is_glob:
        if not globlib.glob(text, recursive=True):
            raise ConnectorError(f"No file matches '{raw}' (looked in {base_dir})")
    elif not path.exists():
        raise ConnectorError(f"Data file '{raw}' does not exist (looked for {text})")
    return text, is_glob


def _options(source: Mapping[str, Any], allowed: Mapping[str, type]) -> str:
    parts = []
    for key, kind in allowed.items():
        if key not in source:
            continue
        value = source[key]
        key = _PARAMETER.get(key, key)
        if kind is bool:
            parts.append(f"{key} = {'true' if value else 'false'}")
        elif kind is int:
            parts.append(f"{key} = {int(value)}")
        else:
            parts.append(f"{key} = {string_literal(str(value))}")
    return "".join(", " + p for p in parts)


@dataclass(frozen=True)
class _ReaderConnector:
    format: str
    function: str
    help: str
    options: Mapping[str, type]

    def plan(self, source: Mapping[str, Any], *, base_dir: Path, alias: str) -> SourcePlan:
        path, is_glob = resolve_path(source, base_dir)
        select = (
            f"SELECT * FROM {self.function}({string_literal(path)}"
            f"{_options(source, self.options)})"
        )
        if is_glob:
            root = path.split("*")[0].split("?")[0].split("[")[0]
            directory = root if root.endswith("/") else str(Path(root).parent) + "/"
            return SourcePlan(select=select, allowed_directories=(directory,), description=path,
                              content=(path,))
        return SourcePlan(select=select, allowed_paths=(path,), description=path,
                          content=(path,))


PARQUET = _ReaderConnector(
    "parquet", "read_parquet", "Parquet file(s); `path` may be a glob",
    {"hive_partitioning": bool, "union_by_name": bool},
)
CSV = _ReaderConnector(
    "csv", "read_csv", "CSV file(s); options: header, delim, quote, escape, dateformat",
    {"header": bool, "delim": str, "quote": str, "escape": str, "dateformat": str,
     "timestampformat": str, "sample_size": int, "all_varchar": bool},
)
JSON = _ReaderConnector(
    "json", "read_json", "JSON or newline-delimited JSON file(s); option: json_format",
    {"json_format": str, "sample_size": int},
)


@dataclass(frozen=True)
class ArrowIpcConnector:
    """Arrow IPC (Feather v2) files, copied into the engine's storage at start."""

    format: str = "arrow"
    help: str = "Arrow IPC file (loaded into the engine at start; prefer Parquet for big data)"

    def plan(self, source: Mapping[str, Any], *, base_dir: Path, alias: str) -> SourcePlan:
        path, is_glob = resolve_path(source, base_dir)
        paths = sorted(globlib.glob(path)) if is_glob else [path]
        tables = []
        for one in paths:
            try:
                with pa.memory_map(one) as mm:
                    try:
                        tables.append(ipc.open_file(mm).read_all())
                    except pa.ArrowInvalid:
                        mm.seek(0)
                        tables.append(ipc.open_stream(mm).read_all())
            except (OSError, pa.ArrowInvalid) as exc:
                raise ConnectorError(f"Cannot read Arrow IPC file '{one}': {exc}") from None
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return SourcePlan(select="", arrow=table, description=path)


ARROW = ArrowIpcConnector()
