"""The Spark engine (gateway.engine_spark) answers like the DuckDB engine over the same data.

One local[2] Spark session for the whole module (it takes seconds to start).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pytest
from argon2 import PasswordHasher

import connectors
from gateway.dp import PrivateQueries
from gateway.engine_spark import SparkEngine, SparkSettings, to_spark
from gateway.errors import QueryFailedError
from gateway.ledger import Ledger
from gateway.state import StateStore
from policy.loader import parse_policy
from tests.test_dp_env import POLICY, DpEnv, open_env, write_data

# Spark's Python workers (SmartNoise's noise runs in the driver, but Spark may
# start workers) use this interpreter.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@dataclass
class Pair:
    duck: DpEnv
    spark: DpEnv
    startup_s: float


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("spark")
    data = root / "data"
    data.mkdir()
    write_data(data)
    duck = open_env(root / "duck", data=data)
    policy = parse_policy(POLICY, base_dir=str(data))
    started = time.monotonic()
    engine = SparkEngine(root / "spark-engine", SparkSettings(master="local[2]"))
    for ds_name, dataset in sorted(policy.datasets.items()):
        for i, (t_name, table) in enumerate(sorted(dataset.tables.items())):
            options = {k: v for k, v in asdict(table.source).items() if v is not None}
            plan = connectors.get(table.source.format).plan(
                options, base_dir=data, alias=f"src_{ds_name}_{i}")
            engine.add_table(ds_name, t_name, plan, options)
    engine.start()
    startup = time.monotonic() - started
    store = StateStore(root / "spark-state", hasher=PasswordHasher(memory_cost=8192))
    ledger = Ledger(store)
    schemas = {key: engine.columns(*key) for key in engine.tables()}
    spark = DpEnv(policy, engine, store, ledger,  # type: ignore[arg-type]
                  PrivateQueries(engine, ledger), schemas)  # type: ignore[arg-type]
    yield Pair(duck, spark, startup)
    spark.close()
    duck.close()


def test_spark_reports_the_duckdb_column_types(pair: Pair) -> None:
    assert set(pair.spark.engine.tables()) == set(pair.duck.engine.tables())
    for key in pair.duck.engine.tables():
        assert pair.spark.engine.columns(*key) == pair.duck.engine.columns(*key), key
    print(f"Spark engine started in {pair.startup_s:.1f} s")


RAW = [
    'SELECT "site", COUNT(*) AS n, SUM("cost") AS total, MIN("age") AS youngest '
    'FROM "health"."visits" WHERE "consent" GROUP BY "site" ORDER BY "site"',
    'SELECT "id", "score" FROM "health"."people" WHERE "grp" = 1 AND "score" > 7 '
    'ORDER BY "id" LIMIT 20',
    'SELECT v."site", COUNT(DISTINCT p."id") AS people FROM "health"."visits" AS v '
    'JOIN "health"."people" AS p ON p."id" = v."patient_id" GROUP BY v."site" ORDER BY 1',
]


@pytest.mark.parametrize("sql", RAW)
def test_raw_results_equal_duckdb(pair: Pair, sql: str) -> None:
    expected = pair.duck.engine.execute(sql).read_all()
    got = pair.spark.engine.execute(sql).read_all()
    assert got.column_names == expected.column_names
    assert got.to_pylist() == expected.to_pylist()
    assert got.num_rows > 0


def test_spark_sql_is_transpiled_and_file_reads_are_refused(pair: Pair) -> None:
    assert to_spark('SELECT "a" FROM "d"."t"') == "SELECT `a` FROM `d`.`t`"
    path = next(iter(pair.spark.engine._plans[("health", "people")].allowed_paths))
    with pytest.raises(QueryFailedError, match="Spark"):
        pair.spark.engine.execute(f"SELECT * FROM parquet.`{path}`").read_all()


DP = [
    "SELECT COUNT(*) AS n FROM visits",
    "SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM visits GROUP BY site ORDER BY site",
    "SELECT g, COUNT(*) AS n FROM counts GROUP BY g ORDER BY g",
]


def _half_width(table: pa.Table, name: str) -> float:
    """The sum of the 95 % half-widths (b·ln 20) of every noise draw behind a column, plus
    one for the rounding of a whole-number column (0 for a group key: no noise)."""
    meta = table.schema.field(name).metadata or {}
    raw = meta.get(b"stockade.dp.scale", b"")
    scales = [float(s) for s in raw.decode().split(",") if s]
    whole = pa.types.is_integer(table.schema.field(name).type)
    return sum(s * math.log(20) for s in scales) + (1.0 if scales and whole else 0.0)


@pytest.mark.parametrize("sql", DP)
def test_dp_results_agree_with_duckdb_within_noise(pair: Pair, sql: str) -> None:
    duck = pair.duck.run(sql, role="statistician", epsilon=10.0)
    spark = pair.spark.run(sql, role="statistician", epsilon=10.0)
    assert spark.column_names == duck.column_names
    assert spark.num_rows == duck.num_rows > 0
    for name in spark.column_names:
        a, b = duck.column(name).to_pylist(), spark.column(name).to_pylist()
        widths = _half_width(duck, name), _half_width(spark, name)
        if widths == (0, 0):  # a group key: no noise
            assert a == b, name
            continue
        assert all(w > 0 for w in widths), name
        # Both answers are the truth plus independent noise: their difference is
        # within the sum of the 95 % half-widths (x 2 for a margin well above 99.9 %).
        bound = 2 * sum(widths)
        for x, y in zip(a, b, strict=True):
            assert abs(x - y) <= bound, (name, x, y, bound)
