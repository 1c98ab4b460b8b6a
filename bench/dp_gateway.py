"""The dp benchmark's gateway: ``stockade serve`` over the benchmark's Parquet file.

One gateway process (:func:`bench.servers.start_gateway`, :data:`bench.servers.THREADS`
DuckDB threads) serves the file as ``bench.t``: in ``dp`` mode to the role
``analyst`` (user :data:`DP_USER`; 2 rows per privacy unit, ``x`` bounded to
[0, 100], ε = 0.5 per mechanism, a budget no run exhausts) and in ``raw`` mode to
the role ``reader`` (user :data:`RAW_USER`). Its state store is fresh in every run,
so no dp answer of an earlier run is ever reused.

:class:`GatewayClients` holds one ADBC connection per user; a call is what an
analyst does, ``cursor.execute`` and ``fetch_arrow_table`` (ADBC prepares the
statement, gets its FlightInfo, fetches it and closes it).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.servers import Server, add_users, start_gateway
from bench.stats import adbc_connect

DP_USER, DP_PASSWORD = "dp-analyst", "dp-analyst-password"
RAW_USER, RAW_PASSWORD = "raw-reader", "raw-reader-password"

POLICY = """\
version: 1
domain: {name: dpbench}
limits: {max_rows: 1000000000, timeout_s: 600}
datasets:
  bench:
    tables:
      t:
        source: {format: parquet, path: PATH}
        privacy_unit: pid
        max_rows_per_unit: 2
        columns:
          x: {lower: 0, upper: 100}
roles:
  analyst:
    datasets:
      bench: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 1000000, delta: 0.5}}
  reader:
    datasets:
      bench: {mode: raw}
  owner: {admin: true}
"""


def policy_text(data: Path) -> str:
    """The gateway's policy over ``data``."""
    return POLICY.replace("PATH", str(data.resolve()))


def start(stack: ExitStack, work: Path, data: Path) -> Server:
    """A gateway over ``data`` with fresh state in ``work`` (stopped with ``stack``)."""
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "policy.yaml"
    policy.write_text(policy_text(data))
    add_users(work / "state", [(DP_USER, "analyst", DP_PASSWORD),
                               (RAW_USER, "reader", RAW_PASSWORD)])
    return start_gateway(stack, policy, work / "state", work / "gateway.log")


@dataclass
class GatewayClients:
    """ADBC connections to one gateway as the dp analyst and as the raw reader."""

    dp: Any
    raw: Any

    @classmethod
    def connect(cls, url: str) -> GatewayClients:
        return cls(adbc_connect(url, DP_USER, DP_PASSWORD),
                   adbc_connect(url, RAW_USER, RAW_PASSWORD))

    def close(self) -> None:
        self.dp.close()
        self.raw.close()

    @staticmethod
    def call(connection: Any, sql: str) -> pa.Table:
        """``execute`` + ``fetch_arrow_table`` on a new cursor, as an analyst would."""
        cur = connection.cursor()
        try:
            cur.execute(sql)
            table: pa.Table = cur.fetch_arrow_table()
            return table
        finally:
            cur.close()
