"""In-process DuckDB, the streaming figure's third column, in a process of its own.

The consumer of the batches and DuckDB share one process, as in an analyst's
notebook with the data on their disk: no server, no network, no serialization.
It runs in a process of its own only so that its memory can be measured as the
servers' is.

``python -m bench.inprocess BATCH_ROWS THREADS [NAME=PARQUET ...]`` prints ``ready``, then
for every line of SQL on stdin runs it to a DuckDB Arrow record batch reader of
``BATCH_ROWS`` rows per batch, reads every batch and prints one JSON line:
``{"seconds": …, "rows": …, "bytes": …}`` (bytes as the Flight clients count them,
the sum of the batches' ``nbytes``).
"""

from __future__ import annotations

import json
import sys
import time

import duckdb


def main() -> None:
    batch_rows = int(sys.argv[1])
    con = duckdb.connect(config={"threads": int(sys.argv[2])})
    for name, path in (arg.split("=", 1) for arg in sys.argv[3:]):
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{name.split(".")[0]}"')
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
    print("ready", flush=True)
    for line in sys.stdin:
        started = time.perf_counter()
        rows = nbytes = 0
        cur = con.cursor()
        for batch in cur.sql(line.strip()).to_arrow_reader(batch_rows):
            rows += batch.num_rows
            nbytes += batch.nbytes
        cur.close()
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "rows": rows, "bytes": nbytes}), flush=True)


if __name__ == "__main__":
    main()
