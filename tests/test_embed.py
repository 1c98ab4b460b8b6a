"""``gateway.serve``: a gateway embedded in Python over in-process frames.

The same policy enforcement as a file-backed domain: exact rows for raw
queries, hidden columns, per-user row filters, dp answers paid in ε.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import yaml

import gateway
import stockade
from gateway.embed import Embedded
from gateway.errors import ConfigError, ConnectorError, NotSupportedError

ROWS = 400
SITES = ("north", "south")

POLICY: dict[str, Any] = {
    "version": 1,
    "domain": {"name": "notebook"},
    "datasets": {
        "oncology": {
            "tables": {
                "screenings": {
                    "source": {"format": "memory"},
                    "privacy_unit": "patient_id",
                    "max_rows_per_unit": 1,
                    "columns": {"patient_id": {"hidden": True},
                                "age": {"lower": 0, "upper": 110}},
                },
            },
        },
    },
    "roles": {
        "clinician": {"datasets": {"oncology": {"mode": "raw",
                                                "row_filter": "site = {user.site}"}}},
        "analyst": {"datasets": {"oncology": {"mode": "dp", "epsilon_per_query": 0.1,
                                              "budget": {"epsilon": 1.0, "delta": 1e-6}}}},
        "owner": {"admin": True},
    },
}


def frame() -> pl.DataFrame:
    return pl.DataFrame({
        "patient_id": list(range(ROWS)),
        "site": [SITES[i % 2] for i in range(ROWS)],
        "age": [20 + i % 70 for i in range(ROWS)],
        "positive": [i % 7 == 0 for i in range(ROWS)],
    })


def rows(gw: Embedded, user: str, sql: str) -> pa.Table:
    with gw.connect(user, f"{user}-password") as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


@pytest.fixture(params=["polars", "arrow", "pandas"])
def embedded(request: pytest.FixtureRequest) -> Iterator[Embedded]:
    data: object = frame()
    if request.param == "arrow":
        data = frame().to_arrow()
    elif request.param == "pandas":
        data = frame().to_pandas()
    with gateway.serve(POLICY, tables={"oncology.screenings": data}) as gw:
        gw.add_user("nora", "clinician", "nora-password", {"site": "north"})
        gw.add_user("ann", "analyst", "ann-password")
        yield gw


def test_raw_rows_are_the_frames_filtered_and_without_hidden_columns(embedded):  # type: ignore[no-untyped-def]
    got = rows(embedded, "nora", "SELECT site, age, positive FROM oncology.screenings "
                                 "ORDER BY age, positive")
    expected = (frame().filter(pl.col("site") == "north").select("site", "age", "positive")
                .sort("age", "positive"))
    assert pl.from_arrow(got).equals(expected)  # type: ignore[union-attr]
    star = rows(embedded, "nora", "SELECT * FROM oncology.screenings")
    assert star.column_names == ["site", "age", "positive"]  # patient_id is hidden
    assert star.num_rows == ROWS // 2
    with pytest.raises(Exception, match="patient_id"):
        rows(embedded, "nora", "SELECT patient_id FROM oncology.screenings")


def test_dp_answer_has_its_privacy_and_exact_epsilon(embedded):  # type: ignore[no-untyped-def]
    with stockade.connect(embedded.url, "ann", "ann-password") as c:
        df = c.sql("SELECT count(*) AS n FROM oncology.screenings")
        p = df.privacy
        assert p is not None and p.epsilon_spent == 0.1
        assert p.epsilon_remaining == pytest.approx(0.9, abs=1e-12)
        noise = p.columns["n"]
        assert noise.mechanism == "laplace" and noise.scale is not None and noise.scale > 0
        assert abs(df["n"][0] - ROWS) < 25 * noise.scale  # P(fail) = e^-25
        # A count is a whole number: the smallest whole half-width covering 95 %.
        assert noise.ci95_half_width == math.ceil(noise.scale * math.log(20) - 0.5)
        with pytest.raises(stockade.SqlError, match="aggregates only"):
            c.sql("SELECT age FROM oncology.screenings")


def test_policy_as_file_or_text_and_state_in_data_dir(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(POLICY))
    users = {"nora": {"role": "clinician", "password": "nora-password",
                      "attributes": {"site": "south"}}}
    state = tmp_path / "state"
    for policy in (policy_file, str(policy_file), policy_file.read_text()):
        with gateway.serve(policy, tables={"oncology.screenings": frame()}, data_dir=state,
                           users=users) as gw:
            got = rows(gw, "nora", "SELECT count(*) AS n FROM oncology.screenings")
            assert got.column("n")[0].as_py() == ROWS // 2
        assert any(state.iterdir())  # kept: data_dir was given; users= updates its logins
    # The policy cannot be replaced live: the frames are not in any file.
    with gateway.serve(POLICY, tables={"oncology.screenings": frame()}) as gw:
        assert gw.domain.policy.file is None
        with pytest.raises(NotSupportedError, match="not started from a policy file"):
            gw.domain.replace_policy(yaml.safe_dump(POLICY) + "# changed\n", by="test")


def test_frames_read_once_from_a_record_batch_reader() -> None:
    table = frame().to_arrow()
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=50))
    with gateway.serve(POLICY, tables={"oncology.screenings": reader},
                       users={"nora": {"role": "clinician", "password": "nora-password",
                                       "attributes": {"site": "north"}}}) as gw:
        got = rows(gw, "nora", "SELECT count(*) AS n FROM oncology.screenings")
        assert got.column("n")[0].as_py() == ROWS // 2


def test_mismatches_are_refused_with_clear_messages(tmp_path: Path) -> None:
    data = frame()
    with pytest.raises(ConfigError, match=r"'oncology\.screening' is not a table of the policy"
                                          r"\. Did you mean 'oncology\.screenings'\?"):
        gateway.serve(POLICY, tables={"oncology.screening": data})
    with pytest.raises(ConfigError, match=r"declares 'oncology\.screenings' with source: "
                                          r"\{format: memory\} but tables= gives no frame"):
        gateway.serve(POLICY)
    with pytest.raises(ConnectorError, match=r"Table 'oncology\.screenings': cannot serve a "
                                             r"builtins\.list; give a polars DataFrame"):
        gateway.serve(POLICY, tables={"oncology.screenings": [1, 2, 3]})
    with pytest.raises(ConnectorError, match="LazyFrame is not data yet"):
        gateway.serve(POLICY, tables={"oncology.screenings": data.lazy()})
    (tmp_path / "s.parquet").write_bytes(b"")
    data.write_parquet(tmp_path / "s.parquet")
    on_disk = {**POLICY, "datasets": {"oncology": {"tables": {"screenings": {
        "source": {"format": "parquet", "path": str(tmp_path / "s.parquet")}}}}},
        "roles": {"owner": {"admin": True}}}
    with pytest.raises(ConfigError, match=r"read from a 'parquet' source in the policy; to serve "
                                          r"a frame for it, declare it with source: "
                                          r"\{format: memory\}"):
        gateway.serve(on_disk, tables={"oncology.screenings": data})
    with pytest.raises(ConfigError, match="Unknown role 'analist'. Did you mean 'analyst'"):
        with gateway.serve(POLICY, tables={"oncology.screenings": data}) as gw:
            gw.add_user("x", "analist", "x-password")
    with pytest.raises(ConfigError, match="does not exist"):
        gateway.serve(tmp_path / "missing.yaml")
    # A file-backed gateway (stockade serve) cannot serve a memory table.
    from connectors.memory import MEMORY

    with pytest.raises(ConnectorError, match=r"gateway\.serve\(policy, tables="):
        MEMORY.plan({"format": "memory"}, base_dir=tmp_path, alias="a")


def test_a_file_backed_table_next_to_a_frame(tmp_path: Path) -> None:
    data = frame()
    data.write_parquet(tmp_path / "s.parquet")
    policy = yaml.safe_load(yaml.safe_dump(POLICY))
    policy["datasets"]["oncology"]["tables"]["copy"] = {
        "source": {"format": "parquet", "path": "s.parquet"}, "privacy_unit": "patient_id"}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    with gateway.serve(tmp_path / "policy.yaml", tables={"oncology.screenings": data},
                       users={"nora": {"role": "clinician", "password": "nora-password",
                                       "attributes": {"site": "north"}}}) as gw:
        got = rows(gw, "nora", "SELECT (SELECT count(*) FROM oncology.copy) AS a, "
                               "(SELECT count(*) FROM oncology.screenings) AS b")
        assert got.to_pylist() == [{"a": ROWS // 2, "b": ROWS // 2}]


def test_closing_frees_the_port() -> None:
    gw = gateway.serve(POLICY, tables={"oncology.screenings": pd.DataFrame(frame().to_pandas())})
    port = gw.port
    assert gw.url == f"grpc://127.0.0.1:{port}"
    gw.close()
    gw.close()  # twice is harmless
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again
    again = gateway.serve(POLICY, tables={"oncology.screenings": frame()}, port=port)
    try:
        assert again.url.endswith(f":{port}")
    finally:
        again.close()
