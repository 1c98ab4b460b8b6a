"""The baseline: a bare pyarrow Flight server streaming DuckDB's record batch reader.

No policy, no auth, no Flight SQL: the ticket is the SQL text. What the gateway
is measured against.
"""

from __future__ import annotations

import sys

import duckdb
import pyarrow.flight as flight


class BareServer(flight.FlightServerBase):
    def __init__(self, location: str, batch_rows: int) -> None:
        super().__init__(location)
        self.con = duckdb.connect()
        self.batch_rows = batch_rows

    def get_flight_info(self, context, descriptor):  # type: ignore[no-untyped-def]
        sql = descriptor.command.decode()
        cur = self.con.cursor()
        schema = cur.sql(sql).limit(0).to_arrow_table().schema
        cur.close()
        endpoint = flight.FlightEndpoint(descriptor.command, [])
        return flight.FlightInfo(schema, descriptor, [endpoint], -1, -1)

    def do_get(self, context, ticket):  # type: ignore[no-untyped-def]
        cur = self.con.cursor()
        reader = cur.sql(ticket.ticket.decode()).to_arrow_reader(self.batch_rows)
        return flight.RecordBatchStream(reader)


def main() -> None:
    server = BareServer("grpc://127.0.0.1:0", int(sys.argv[1]))
    print(f"listening on grpc://127.0.0.1:{server.port}", flush=True)
    try:
        sys.stdin.read()  # runs until the parent closes our stdin
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
