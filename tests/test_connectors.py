"""Connectors: the registry and each file format's plan."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import connectors
from gateway.errors import ConnectorError, PolicyError


def test_registry_suggests_close_names():
    with pytest.raises(PolicyError, match="Did you mean 'csv'"):
        connectors.get("cvs")


def test_glob_paths_allow_their_directory_only(tmp_path: Path):
    (tmp_path / "parts").mkdir()
    for i in range(2):
        duckdb.execute(f"COPY (SELECT {i} AS x) TO '{tmp_path / 'parts' / f'p{i}.parquet'}'")
    plan = connectors.get("parquet").plan({"format": "parquet", "path": "parts/*.parquet"},
                                          base_dir=tmp_path, alias="a")
    assert plan.allowed_directories == (str(tmp_path / "parts") + "/",)
    assert plan.allowed_paths == ()
    with pytest.raises(ConnectorError, match="No file matches"):
        connectors.get("parquet").plan({"format": "parquet", "path": "none/*.parquet"},
                                       base_dir=tmp_path, alias="a")


def test_paths_with_quotes_are_quoted(tmp_path: Path):
    odd = tmp_path / "it's.csv"
    odd.write_text("a\n1\n")
    plan = connectors.get("csv").plan({"format": "csv", "path": "it's.csv", "header": True},
                                      base_dir=tmp_path, alias="a")
    assert duckdb.sql(plan.select).fetchall() == [(1,)]


def test_duckdb_source_needs_a_table(tmp_path: Path):
    db = tmp_path / "x.duckdb"
    duckdb.connect(str(db)).close()
    with pytest.raises(ConnectorError, match="needs 'table"):
        connectors.get("duckdb").plan({"format": "duckdb", "path": "x.duckdb"},
                                      base_dir=tmp_path, alias="a")


def test_arrow_ipc_stream_and_file(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    table = pa.table({"x": [1, 2]})
    with ipc.new_stream(str(tmp_path / "s.arrows"), table.schema) as writer:
        writer.write_table(table)
    plan = connectors.get("arrow").plan({"format": "arrow", "path": "s.arrows"},
                                        base_dir=tmp_path, alias="a")
    assert plan.arrow is not None and plan.arrow.equals(table)
