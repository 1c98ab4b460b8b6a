"""End-to-end: what one request may ask, through ADBC and raw Flight.

A gateway of its own over the shared test data, with tight limits:

| role   | max_rows  | timeout_s | reads              |
|--------|-----------|-----------|--------------------|
| capped | 20        | 3         | oncology, bulk raw |
| wide   | 1,000,000 | 60        | oncology, bulk raw |

and ``max_parameter_rows`` lowered to 200 (the other request limits at their defaults).
Covered: a result ticket names one execution (query and bound parameters); the
rows of a prepared statement share one row cap and one deadline; named
parameters bind by name and fail at plan time; query size and shape are bounded
before planning; a cut answer says so in its schema.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_manager import AdbcStatusCode

from gateway.flightsql import flight_sql_pb2 as pb
from gateway.flightsql.server import pack, unpack
from gateway.limits import RequestLimits

POLICY = """\
version: 1
domain: {{name: limits_lab}}
limits: {{max_rows: 20, timeout_s: 3}}
datasets:
  oncology:
    tables:
      screenings:
        source: {{format: parquet, path: {data}/screenings.parquet}}
        privacy_unit: patient_id
        columns: {{patient_id: {{hidden: true}}}}
  bulk:
    tables:
      numbers:
        source: {{format: parquet, path: {data}/numbers.parquet}}
roles:
  capped:
    datasets: {{oncology: {{mode: raw}}, bulk: {{mode: raw}}}}
  wide:
    limits: {{max_rows: 1000000, timeout_s: 60}}
    datasets: {{oncology: {{mode: raw}}, bulk: {{mode: raw}}}}
  owner: {{admin: true}}
"""
USERS = {"cap": "capped", "cap2": "capped", "wid": "wide"}
MAX_PARAMETER_ROWS = 200
LIMITS = RequestLimits()  # the defaults, except max_parameter_rows
SCREENINGS = "oncology.screenings"


@dataclass
class Lab:
    url: str
    data: Path

    def connect(self, user: str) -> Any:
        return flight_sql.connect(self.url, db_kwargs={"username": user,
                                                        "password": f"{user}-password"},
                                  autocommit=True)

    def direct(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect()
        try:
            return con.execute(sql.replace(SCREENINGS, f"'{self.data}/screenings.parquet'")
                               ).fetchall()
        finally:
            con.close()

    def flight(self, user: str) -> tuple[flight.FlightClient, flight.FlightCallOptions]:
        client = flight.FlightClient(self.url)
        header = client.authenticate_basic_token(user, f"{user}-password")
        return client, flight.FlightCallOptions(headers=[header], timeout=60)


@pytest.fixture(scope="module")
def lab(test_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from gateway.serving import start_server
    from gateway.settings import load_settings

    root = tmp_path_factory.mktemp("limits")
    (root / "policy.yaml").write_text(POLICY.format(data=test_root / "data"))
    os.environ.pop("STOCKADE_ADMIN_PASSWORD", None)
    settings = load_settings({"policy": str(root / "policy.yaml"), "data_dir": str(root / "state"),
                              "port": 0, "memory_limit": "1GB",
                              "max_parameter_rows": MAX_PARAMETER_ROWS}, env={})
    server, domain, url, _ = start_server(settings)
    for name, role in USERS.items():
        domain.store.add_user(name, role, f"{name}-password", {})
    yield Lab(url, test_root / "data")
    server.shutdown()
    domain.close()


@pytest.fixture
def connect(lab: Lab) -> Iterator[Callable[[str], Any]]:
    opened: list[Any] = []

    def _connect(user: str) -> Any:
        conn = lab.connect(user)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


def run(conn: Any, sql: str, params: Any = None) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def error_of(conn: Any, sql: str, params: Any = None) -> adbc_driver_manager.Error:
    with pytest.raises(adbc_driver_manager.Error) as info:
        run(conn, sql, params)
    return info.value


def _cmd(message: Any) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(pack(message))


def _prepare(client: flight.FlightClient, options: flight.FlightCallOptions, sql: str) -> bytes:
    request = pack(pb.ActionCreatePreparedStatementRequest(query=sql))
    [result] = client.do_action(flight.Action("CreatePreparedStatement", request), options)
    return bytes(unpack(result.body.to_pybytes())[1].prepared_statement_handle)


def _bind(client: flight.FlightClient, options: flight.FlightCallOptions, handle: bytes,
          batch: pa.RecordBatch) -> None:
    command = pb.CommandPreparedStatementQuery(prepared_statement_handle=handle)
    writer, reader = client.do_put(_cmd(command), batch.schema, options)
    writer.write_batch(batch)
    writer.done_writing()
    reader.read()
    writer.close()


# ---- a ticket names one execution ------------------------------------------------------

def test_prepared_tickets_keep_the_parameters_they_were_planned_with(lab: Lab) -> None:
    client, options = lab.flight("cap")
    sql = f"SELECT count(*) AS n FROM {SCREENINGS} WHERE age > ?"
    handle = _prepare(client, options, sql)
    command = _cmd(pb.CommandPreparedStatementQuery(prepared_statement_handle=handle))
    _bind(client, options, handle, pa.record_batch({"0": [90]}))
    first = client.get_flight_info(command, options).endpoints[0].ticket
    _bind(client, options, handle, pa.record_batch({"0": [10]}))
    second = client.get_flight_info(command, options).endpoints[0].ticket
    assert first.ticket != second.ticket
    [(over_90,)] = lab.direct(f"SELECT count(*) FROM {SCREENINGS} WHERE age > 90")
    [(over_10,)] = lab.direct(f"SELECT count(*) FROM {SCREENINGS} WHERE age > 10")
    assert over_90 != over_10
    assert client.do_get(first, options).read_all().column("n").to_pylist() == [over_90]
    assert client.do_get(second, options).read_all().column("n").to_pylist() == [over_10]
    # ... however often it is fetched, and only by its owner.
    assert client.do_get(first, options).read_all().column("n").to_pylist() == [over_90]
    other, other_options = lab.flight("cap2")
    with pytest.raises(KeyError, match="Result ticket not found"):
        other.do_get(first, other_options).read_all()


def test_adbc_partitions_keep_their_parameters(lab: Lab, connect: Any) -> None:
    sql = f"SELECT count(*) AS n FROM {SCREENINGS} WHERE age > ?"
    with connect("cap").cursor() as cur:
        first, _ = cur.adbc_execute_partitions(sql, (90,))
        second, _ = cur.adbc_execute_partitions(sql, (10,))
        cur.adbc_read_partition(first[0])
        got_first = cur.fetch_arrow_table().column("n").to_pylist()
        cur.adbc_read_partition(second[0])
        got_second = cur.fetch_arrow_table().column("n").to_pylist()
    assert got_first == [lab.direct(f"SELECT count(*) FROM {SCREENINGS} WHERE age > 90")[0][0]]
    assert got_second == [lab.direct(f"SELECT count(*) FROM {SCREENINGS} WHERE age > 10")[0][0]]


# ---- the rows of one request share its limits ---------------------------------------------

def test_parameter_rows_share_one_row_cap(lab: Lab, connect: Any) -> None:
    sql = f"SELECT screening_id FROM {SCREENINGS} ORDER BY screening_id LIMIT 20 OFFSET ?"
    table = run(connect("cap"), sql, pa.record_batch({"0": [0, 20, 40, 60, 80]}))
    assert table.column("screening_id").to_pylist() == list(range(20))
    meta = table.schema.metadata or {}
    assert meta.get(b"stockade.truncated") == b"true"
    assert meta.get(b"stockade.max_rows") == b"20"


def _query_of_cost(factor: int) -> str:
    """A query over bulk.numbers whose run costs about ``factor`` times one scan."""
    copies = ", ".join(f"({k})" for k in range(factor))
    return ("SELECT count(DISTINCT n.id * 64 + m.k + ?) AS n FROM bulk.numbers AS n, "
            f"(VALUES {copies}) AS m(k) WHERE n.id < 1000000")


def test_parameter_rows_share_one_deadline(connect: Any) -> None:
    # Each row is well within the 3 s limit on its own; all of them together are not.
    # The role's max_rows (20) stops a request after 20 one-row answers, so the rows are
    # made heavy enough that 20 of them take about three times the limit.
    conn = connect("cap")

    def timed(sql: str) -> float:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            assert run(conn, sql, (1,)).num_rows == 1
            times.append(time.perf_counter() - started)
        return min(times)

    base = timed(_query_of_cost(1))
    factor = max(1, min(40, math.ceil(0.45 / base)))  # about 0.45 s a row
    sql = _query_of_cost(factor)
    one = timed(sql)
    assert one < 2.0, f"one row took {one:.2f} s: too slow a machine for this test"
    rows = 20  # the role's max_rows: one answer row per parameter row
    assert rows * one > 2 * 3.0, f"20 rows take {rows * one:.2f} s: make the query slower"
    started = time.perf_counter()
    err = error_of(conn, sql, pa.record_batch({"0": list(range(rows))}))
    elapsed = time.perf_counter() - started
    assert "Query stopped after 3 s, the time limit for your role" in str(err)
    assert elapsed < 3.0 + 2.0, elapsed  # stopped at the request's deadline, plus slack


def test_parameter_rows_are_bounded(connect: Any) -> None:
    conn = connect("cap")
    sql = f"SELECT count(*) AS n FROM {SCREENINGS} WHERE age > ?"
    # One answer row per parameter row, up to the role's 20 rows.
    assert run(conn, sql, pa.record_batch({"0": list(range(MAX_PARAMETER_ROWS))})).num_rows == 20
    err = error_of(conn, sql, pa.record_batch({"0": list(range(MAX_PARAMETER_ROWS + 1))}))
    assert err.status_code == AdbcStatusCode.INVALID_ARGUMENT
    assert f"{MAX_PARAMETER_ROWS + 1} parameter rows were bound; this server runs at most " \
           f"{MAX_PARAMETER_ROWS} per request" in str(err)
    big = pa.record_batch({"0": ["x" * (RequestLimits().max_parameter_bytes + 1)]})
    err = error_of(conn, f"SELECT count(*) AS n FROM {SCREENINGS} WHERE site = ?", big)
    assert "The bound parameters take" in str(err) and "bytes; this server accepts" in str(err)


# ---- named parameters ---------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["$", ":"])
def test_named_parameters_bind_by_name(lab: Lab, connect: Any, spelling: str) -> None:
    sql = (f"SELECT count(*) AS n FROM {SCREENINGS} "
           f"WHERE age > {spelling}min_age AND age < {spelling}max_age")
    # Columns in the other order than in the query: bound by name, not position.
    got = run(connect("cap"), sql, pa.record_batch({"max_age": [70], "min_age": [60]}))
    [(want,)] = lab.direct(f"SELECT count(*) FROM {SCREENINGS} WHERE age > 60 AND age < 70")
    assert want > 0
    assert got.column("n").to_pylist() == [want]


def test_a_named_parameter_is_checked_when_planned(lab: Lab) -> None:
    client, options = lab.flight("cap")
    sql = f"SELECT count(*) AS n FROM {SCREENINGS} WHERE age > $min_age AND age < $max_age"
    handle = _prepare(client, options, sql)
    command = _cmd(pb.CommandPreparedStatementQuery(prepared_statement_handle=handle))
    _bind(client, options, handle, pa.record_batch({"min_age": [60]}))
    with pytest.raises(pa.ArrowInvalid, match=r"Parameter \$max_age has no value: bind a value "
                                              r"named 'max_age'"):
        client.get_flight_info(command, options)
    with pytest.raises(pa.ArrowInvalid, match=r"Parameter \$max_age has no value"):
        client.get_schema(command, options)
    _bind(client, options, handle, pa.record_batch({"min_age": [60], "max_ag": [70]}))
    with pytest.raises(pa.ArrowInvalid, match=r"Parameter 'max_ag' is not in the query \(its "
                                              r"parameters are \$min_age, \$max_age\)"):
        client.get_flight_info(command, options)
    # A statement that binds nothing is refused at GetFlightInfo, not by the engine at DoGet.
    with pytest.raises(pa.ArrowInvalid, match=r"Parameter \$min_age has no value"):
        client.get_flight_info(_cmd(pb.CommandStatementQuery(query=sql)), options)


def test_parameter_schema_names_named_parameters(connect: Any) -> None:
    with connect("cap").cursor() as cur:
        schema = cur.adbc_prepare(f"SELECT count(*) AS n FROM {SCREENINGS} "
                                  "WHERE age > $min_age AND site = $site AND age < $min_age + 10")
    assert schema.names == ["min_age", "site"]


# ---- size and shape of a query ----------------------------------------------------------

@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT count(*) AS n FROM oncology.screenings WHERE "
     + " AND ".join(f"age > {i}" for i in range(5000)),
     f"expressions nest more than {LIMITS.max_query_depth} levels deep"),
    ("SELECT count(*) AS n FROM oncology.screenings WHERE age IN ("
     + ", ".join(["age"] * LIMITS.max_query_nodes) + ")",
     f"The query has more than {LIMITS.max_query_nodes} expression nodes"),
    ("SELECT 1 AS x FROM oncology.screenings WHERE site = '" + "x" * LIMITS.max_query_bytes + "'",
     f"this server accepts queries of up to {LIMITS.max_query_bytes} bytes"),
    ("SELECT " + "(" * 120 + "1" + ")" * 120 + " AS x FROM oncology.screenings",
     "nests parentheses, functions or operators too deeply"),
], ids=["5000 ANDs", "many nodes", "100 KB", "deep parentheses"])
def test_a_query_too_big_to_plan_is_refused_at_once(connect: Any, sql: str, message: str) -> None:
    started = time.perf_counter()
    err = error_of(connect("cap"), sql)
    assert time.perf_counter() - started < 2.5  # refused before planning (it took 8-10 s)
    assert err.status_code == AdbcStatusCode.INVALID_ARGUMENT
    assert message in str(err)


# ---- a cut answer says so -----------------------------------------------------------------

def test_a_cut_answer_is_marked_in_its_schema(lab: Lab, connect: Any) -> None:
    conn = connect("cap")
    cut = run(conn, f"SELECT screening_id FROM {SCREENINGS}")
    assert cut.num_rows == 20
    assert cut.schema.metadata == {b"stockade.truncated": b"true", b"stockade.max_rows": b"20"}
    for whole in (f"SELECT screening_id FROM {SCREENINGS} LIMIT 20",
                  f"SELECT screening_id FROM {SCREENINGS} WHERE screening_id < 20"):
        table = run(conn, whole)
        assert table.num_rows == 20
        assert not (table.schema.metadata or {}), whole
    # Raw Flight: the FlightInfo's schema and the stream's say the same.
    client, options = lab.flight("cap")
    query = _cmd(pb.CommandStatementQuery(query=f"SELECT screening_id FROM {SCREENINGS}"))
    info = client.get_flight_info(query, options)
    assert info.schema.metadata[b"stockade.truncated"] == b"true"
    reader = client.do_get(info.endpoints[0].ticket, options)
    assert reader.schema.metadata[b"stockade.truncated"] == b"true"
    assert reader.read_all().num_rows == 20
    # A statement ticket fetched again (no GetFlightInfo before it) is marked as well.
    again = client.do_get(info.endpoints[0].ticket, options)
    assert again.schema.metadata[b"stockade.max_rows"] == b"20"


@pytest.mark.parametrize(("where", "rows", "cut"), [
    ("", 1_000_000, True),
    ("WHERE id < 900000", 900_000, False),
    ("WHERE id < 1000000", 1_000_000, False),
])
def test_a_long_answer_is_marked_before_it_streams(connect: Any, where: str, rows: int,
                                                   cut: bool) -> None:
    # 24 bytes a row: the look-ahead (8 MiB) ends long before 1,000,000 rows, so whether
    # the answer is cut is counted by the engine before the schema is sent.
    table = run(connect("wid"), f"SELECT id, bucket, half FROM bulk.numbers {where}")
    assert table.num_rows == rows
    meta = table.schema.metadata or {}
    assert (meta.get(b"stockade.truncated") == b"true") is cut
    assert (meta.get(b"stockade.max_rows") == b"1000000") is cut
