"""The one protocol every connector implements.

A connector turns a table's ``source:`` mapping from the policy into a
:class:`SourcePlan`: what the engine must do, before it is locked down, so that
the table can be read as a DuckDB view named ``"<dataset>"."<table>"``. The
engine runs the plan on its build connection; analyst SQL never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class SourcePlan:
    """How the engine makes one table readable.

    - ``setup``: statements run once before the view (``ATTACH ... (READ_ONLY)``);
    - ``select``: a DuckDB ``SELECT`` that produces the table's rows;
    - ``allowed_paths`` / ``allowed_directories``: the only files the locked
      engine may still open (DuckDB's ``allowed_paths``/``allowed_directories``);
    - ``arrow``: an Arrow table to copy into the engine's own storage when the
      data cannot be read in place (Arrow IPC files, in-process frames);
    - ``extensions``: DuckDB extensions the engine loads (from their pip wheels)
      before ``setup``, e.g. ``postgres_scanner``;
    - ``secrets``: text that must never appear in an error, status or log line
      (a DSN, a password): the engine replaces it with the table's name;
    - ``content``: for a source read as files (Parquet, CSV, JSON, a DuckDB
      database), the paths or globs whose bytes are its whole content: the engine
      knows the source changed when their hash does (:mod:`gateway.snapshots`).
      ``None`` for a live source (a database server, SQLite), whose content can
      change between two queries without any file telling.
    """

    select: str
    setup: tuple[str, ...] = ()
    allowed_paths: tuple[str, ...] = ()
    allowed_directories: tuple[str, ...] = ()
    arrow: pa.Table | None = field(default=None, compare=False)
    description: str = ""
    extensions: tuple[str, ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)
    content: tuple[str, ...] | None = None


class Connector(Protocol):
    """A kind of data source, selected by ``source: {format: NAME}``."""

    @property
    def format(self) -> str:
        """The name used in ``source: {format: NAME}``."""
        ...

    @property
    def help(self) -> str:
        """One line for docs and error messages."""
        ...

    def plan(self, source: Mapping[str, Any], *, base_dir: Path, alias: str) -> SourcePlan:
        """Return the plan for ``source``; ``alias`` is a unique SQL-safe name the
        connector may use for an attached database. Raise
        :class:`gateway.errors.ConnectorError` when the source cannot be read."""
        ...
