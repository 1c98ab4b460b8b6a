"""In-process frames: tables given to :func:`gateway.serve` in Python.

A table declared with ``source: {format: memory}`` has no file: its rows are a
polars or pandas DataFrame, a pyarrow Table or a RecordBatchReader handed to
``gateway.serve(policy, tables={"dataset.table": frame})``. The frame is copied
into the engine's own storage when the gateway starts (later changes to the
frame are not seen), so the locked engine reads no file for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors.base import SourcePlan
from gateway.errors import ConnectorError

FRAME_TYPES = "a polars DataFrame, a pandas DataFrame, a pyarrow Table or RecordBatchReader"


def to_arrow(frame: object, name: str) -> pa.Table:
    """``frame`` as an Arrow table, or a ConnectorError naming the table and the type."""
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    if isinstance(frame, pa.RecordBatchReader):
        return frame.read_all()
    module = type(frame).__module__.split(".")[0]
    kind = type(frame).__name__
    if module == "polars" and kind == "DataFrame":
        return frame.to_arrow()  # type: ignore[attr-defined]
    if module == "pandas" and kind == "DataFrame":
        return pa.Table.from_pandas(frame, preserve_index=False)
    if module == "polars" and kind == "LazyFrame":
        raise ConnectorError(f"Table '{name}': a polars LazyFrame is not data yet; "
                             "pass frame.collect()")
    raise ConnectorError(f"Table '{name}': cannot serve a {type(frame).__module__}.{kind}; "
                         f"give {FRAME_TYPES}")


@dataclass(frozen=True)
class MemoryConnector:
    format: str = "memory"
    help: str = "a frame given in Python to gateway.serve(policy, tables={...})"

    def plan(self, source: Mapping[str, Any], *, base_dir: Path, alias: str) -> SourcePlan:
        # Reached only by a gateway started from a policy file (``stockade serve``,
        # a policy check): the frame lives in the Python process that embeds the gateway.
        raise ConnectorError(
            "A 'memory' source is a frame given in Python: serve this policy with "
            "gateway.serve(policy, tables={'dataset.table': frame}), not from a file")

    def plan_frame(self, frame: object, name: str) -> SourcePlan:
        """The plan for ``frame``, served as table ``name`` (``dataset.table``)."""
        table = to_arrow(frame, name)
        return SourcePlan(select="", arrow=table,
                          description=f"in-process frame of {table.num_rows} rows")


MEMORY = MemoryConnector()
