"""The baseline: a bare pyarrow Flight server streaming DuckDB's record batch reader.

No policy, no auth, no sessions, no batch slicing: what the gateway is measured
against. It answers two kinds of request:

- pyarrow's Flight client: a command descriptor whose bytes are the SQL text;
- ADBC's Flight SQL driver: ``CommandStatementQuery`` and the prepared statement
  actions it sends for every query, handled in the fewest lines that work (the
  prepared statement handle and every ticket are the SQL text itself).

``python -m bench.bare_server BATCH_ROWS THREADS [NAME=PARQUET ...]`` prints ``listening
on grpc://…`` and serves until its stdin closes, with ``THREADS`` DuckDB threads; each
``NAME`` (``dataset.table``) is a view over ``PARQUET``, so the same SQL runs here and on
the gateway.
"""

from __future__ import annotations

import sys
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2

from gateway.flightsql import flight_sql_pb2 as pb

PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."


def _pack(message: Any) -> bytes:
    wrapper = any_pb2.Any()
    wrapper.Pack(message, type_url_prefix="type.googleapis.com/")
    data: bytes = wrapper.SerializeToString()
    return data


def _sql_of(command: bytes) -> str:
    """The SQL in a descriptor's command: Flight SQL messages, or plain SQL text."""
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(command)
    except Exception:  # noqa: BLE001 - plain SQL text is not a protobuf
        return command.decode()
    name = wrapper.type_url.removeprefix(PREFIX)
    if name == "CommandStatementQuery":
        message: Any = pb.CommandStatementQuery()
        message.ParseFromString(wrapper.value)
        return str(message.query)
    if name == "CommandPreparedStatementQuery":
        message = pb.CommandPreparedStatementQuery()
        message.ParseFromString(wrapper.value)
        return bytes(message.prepared_statement_handle).decode()
    if not wrapper.type_url:
        return command.decode()
    raise flight.FlightServerError(f"not supported by the bare server: {name}")


class BareServer(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(self, location: str, batch_rows: int, threads: int,
                 views: dict[str, str]) -> None:
        super().__init__(location)
        self.con = duckdb.connect(config={"threads": threads})
        for name, path in views.items():
            schema = name.split(".")[0]
            self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
        self.batch_rows = batch_rows

    def _schema(self, sql: str) -> pa.Schema:
        cur = self.con.cursor()
        try:
            return cur.sql(sql).limit(0).to_arrow_table().schema
        finally:
            cur.close()

    def get_flight_info(self, context, descriptor):  # type: ignore[no-untyped-def]
        sql = _sql_of(bytes(descriptor.command))
        endpoint = flight.FlightEndpoint(sql.encode(), [])
        return flight.FlightInfo(self._schema(sql), descriptor, [endpoint], -1, -1)

    def do_get(self, context, ticket):  # type: ignore[no-untyped-def]
        cur = self.con.cursor()
        reader = cur.sql(ticket.ticket.decode()).to_arrow_reader(self.batch_rows)
        return flight.RecordBatchStream(reader)

    def do_action(self, context, action):  # type: ignore[no-untyped-def]
        body = action.body.to_pybytes() if action.body is not None else b""
        wrapper = any_pb2.Any()
        wrapper.ParseFromString(body)
        if action.type == "CreatePreparedStatement":
            request = pb.ActionCreatePreparedStatementRequest()
            request.ParseFromString(wrapper.value)
            result = pb.ActionCreatePreparedStatementResult(
                prepared_statement_handle=request.query.encode(),
                dataset_schema=self._schema(request.query).serialize().to_pybytes())
            return [flight.Result(pa.py_buffer(_pack(result)))]
        if action.type == "ClosePreparedStatement":
            return []
        raise flight.FlightServerError(f"not supported by the bare server: {action.type}")


def main() -> None:
    views = dict(arg.split("=", 1) for arg in sys.argv[3:])
    server = BareServer("grpc://127.0.0.1:0", int(sys.argv[1]), int(sys.argv[2]), views)
    print(f"listening on grpc://127.0.0.1:{server.port}", flush=True)
    try:
        sys.stdin.read()  # runs until the parent closes our stdin
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
