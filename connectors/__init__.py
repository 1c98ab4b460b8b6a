"""Where the owner's data lives: one connector per kind of source.

>>> get("parquet").format
'parquet'
>>> get("parket")
Traceback (most recent call last):
...
gateway.errors.PolicyError: Unknown source format 'parket'. Did you mean 'parquet'? Known formats: arrow, csv, duckdb, json, memory, parquet, postgres, sqlite
"""

from __future__ import annotations

from connectors.base import Connector, SourcePlan
from connectors.duckdb_file import DUCKDB
from connectors.files import ARROW, CSV, JSON, PARQUET
from connectors.memory import MEMORY
from connectors.postgres import POSTGRES
from connectors.sqlite import SQLITE
from gateway.errors import PolicyError, did_you_mean

REGISTRY: dict[str, Connector] = {
    c.format: c for c in (PARQUET, CSV, JSON, ARROW, DUCKDB, POSTGRES, SQLITE)
}
REGISTRY[MEMORY.format] = MEMORY


def get(format: str) -> Connector:
    """The connector for ``format``, or a PolicyError that suggests a close name."""
    try:
        return REGISTRY[format]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise PolicyError(
            f"Unknown source format '{format}'.{did_you_mean(format, REGISTRY)} "
            f"Known formats: {known}"
        ) from None


__all__ = ["Connector", "SourcePlan", "REGISTRY", "get"]
