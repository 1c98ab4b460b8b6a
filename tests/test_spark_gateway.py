"""A dataset on a Spark engine (``engine: {type: spark, master: "local[2]"}``) through a
real gateway: the same answers as a DuckDB dataset over the same files, ``raw`` and
``dp``, one query never reading both engines.

One local[2] Spark session for the module (it takes seconds to start).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gateway.engine_routed import RoutedEngine, datasets_read
from gateway.engine_spark import SparkEngine
from gateway.errors import PolicyError
from policy.loader import parse_policy
from tests.test_dp_env import write_data

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

PASSWORDS = {"rita": "rita-password", "ann": "ann-password", "owner": "owner-password"}
EPSILON = 1.0

TABLES = """\
    tables:
      visits:
        source: {format: parquet, path: data/visits.parquet}
        privacy_unit: patient_id
        max_rows_per_unit: 2
        row_filter: "consent"
        columns:
          patient_id: {hidden: true}
          cost: {lower: 0, upper: 100}
          age: {lower: 0, upper: 100}
          name: {mask: "'***'"}
      people:
        source: {format: parquet, path: data/people.parquet}
        privacy_unit: id
        max_rows_per_unit: 1
        columns:
          score: {lower: 0, upper: 10}
"""

POLICY = f"""\
version: 1
domain: {{name: spark_clinic}}
datasets:
  oncology:
    engine: {{type: spark, master: "local[2]"}}
{TABLES}
  registry:
{TABLES}
roles:
  researcher:
    datasets:
      oncology: {{mode: raw}}
      registry: {{mode: raw}}
  analyst:
    datasets:
      oncology: {{mode: dp, epsilon_per_query: {EPSILON}, budget: {{epsilon: 100.0, delta: 0.001}}}}
      registry: {{mode: dp, epsilon_per_query: {EPSILON}, budget: {{epsilon: 100.0, delta: 0.001}}}}
  owner: {{admin: true}}
"""


class SparkGateway:
    def __init__(self, url: str, domain: Any) -> None:
        self.url, self.domain = url, domain

    def query(self, user: str, sql: str) -> pa.Table:
        import adbc_driver_flightsql.dbapi as flight_sql

        conn = flight_sql.connect(self.url, db_kwargs={"username": user,
                                                       "password": PASSWORDS[user]},
                                  autocommit=True)
        try:
            cur = conn.cursor()
            cur.execute(sql)
            table: pa.Table = cur.fetch_arrow_table()
            return table
        finally:
            conn.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkGateway]:
    from gateway.serving import start_server
    from gateway.settings import load_settings

    root = tmp_path_factory.mktemp("spark_domain")
    (root / "data").mkdir()
    write_data(root / "data")
    (root / "policy.yaml").write_text(POLICY)
    settings = load_settings({"policy": str(root / "policy.yaml"),
                              "data_dir": str(root / "state"), "port": 0,
                              "memory_limit": "1GB"}, env={})
    server, domain, url, _ = start_server(settings)
    try:
        domain.store.add_user("rita", "researcher", PASSWORDS["rita"], {})
        domain.store.add_user("ann", "analyst", PASSWORDS["ann"], {})
        yield SparkGateway(url, domain)
    finally:
        server.shutdown()
        domain.close()


def test_spark_datasets_are_routed_to_spark(gw: SparkGateway) -> None:
    engine = gw.domain.engine
    assert isinstance(engine, RoutedEngine)
    assert isinstance(engine.route('SELECT * FROM "oncology"."visits"'), SparkEngine)
    assert not isinstance(engine.route('SELECT * FROM "registry"."visits"'), SparkEngine)
    assert not isinstance(engine.route("SELECT 1"), SparkEngine)
    assert set(engine.tables()) == {(ds, t) for ds in ("oncology", "registry")
                                    for t in ("people", "visits")}
    assert engine.columns("oncology", "visits") == engine.columns("registry", "visits")


RAW = [
    "SELECT site, COUNT(*) AS n, SUM(cost) AS total, MIN(age) AS youngest FROM {ds}.visits "
    "GROUP BY site ORDER BY site",
    "SELECT * FROM {ds}.visits WHERE age > 80 ORDER BY site, cost, age LIMIT 50",
    "SELECT id, score FROM {ds}.people WHERE grp = 1 AND score > 7 ORDER BY id LIMIT 20",
    "SELECT v.site, COUNT(*) AS n FROM {ds}.visits AS v JOIN {ds}.people AS p "
    "ON p.id = v.age GROUP BY v.site ORDER BY 1",
]


@pytest.mark.parametrize("sql", RAW)
def test_raw_answers_equal_the_duckdb_dataset(gw: SparkGateway, sql: str) -> None:
    duck = gw.query("rita", sql.format(ds="registry"))
    spark = gw.query("rita", sql.format(ds="oncology"))
    assert spark.column_names == duck.column_names
    assert spark.num_rows == duck.num_rows > 0
    assert spark.to_pylist() == duck.to_pylist()
    # The policy applies on Spark too: the row filter, the hidden and masked columns.
    assert "patient_id" not in spark.column_names
    if "name" in spark.column_names:
        assert set(spark.column("name").to_pylist()) == {"***"}


def _half_width(table: pa.Table, name: str) -> float:
    meta = table.schema.field(name).metadata or {}
    raw = meta.get(b"stockade.dp.ci95_half_width", b"")
    return sum(float(w) for w in raw.decode().split(",") if w)


DP = [
    "SELECT COUNT(*) AS n FROM {ds}.visits",
    "SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM {ds}.visits GROUP BY site ORDER BY site",
]


@pytest.mark.parametrize("sql", DP)
def test_dp_answers_agree_within_noise_and_charge_exactly(gw: SparkGateway, sql: str) -> None:
    ledger = gw.domain.ledger
    before = {ds: ledger.balance("ann", ds) for ds in ("oncology", "registry")}
    duck = gw.query("ann", sql.format(ds="registry"))
    spark = gw.query("ann", sql.format(ds="oncology"))
    # The same price on both engines, charged exactly once, as the answer reports.
    spent = {name: float((t.schema.metadata or {})[b"stockade.dp.epsilon_spent"])
             for name, t in (("registry", duck), ("oncology", spark))}
    assert spent["oncology"] == spent["registry"] > 0
    assert spent["oncology"] % EPSILON == 0  # epsilon_per_query per released statistic
    for ds in ("oncology", "registry"):
        after = ledger.balance("ann", ds)
        assert after.spent_epsilon == pytest.approx(before[ds].spent_epsilon + spent[ds])
    assert spark.column_names == duck.column_names
    assert spark.num_rows == duck.num_rows > 0
    for name in spark.column_names:
        a, b = duck.column(name).to_pylist(), spark.column(name).to_pylist()
        widths = _half_width(duck, name), _half_width(spark, name)
        if widths == (0, 0):  # a group key: no noise
            assert a == b, name
            continue
        assert all(w > 0 for w in widths), name
        # Both are the truth plus independent noise: the difference is within the
        # sum of the 95 % half-widths (x 2 for a margin well above 99.9 %).
        bound = 2 * sum(widths)
        for x, y in zip(a, b, strict=True):
            assert abs(x - y) <= bound, (name, x, y, bound)


def test_a_query_reading_both_engines_is_refused(gw: SparkGateway) -> None:
    with pytest.raises(Exception, match="different engines") as info:
        gw.query("rita", "SELECT COUNT(*) FROM oncology.visits AS a "
                         "JOIN registry.people AS b ON a.age = b.id")
    assert "oncology on spark, registry on duckdb" in str(info.value)
    assert "query them separately" in str(info.value)


def test_files_cannot_be_read_through_spark(gw: SparkGateway) -> None:
    spark = gw.domain.engine.route('SELECT * FROM "oncology"."visits"')
    path = next(iter(spark._plans[("oncology", "visits")].allowed_paths))
    with pytest.raises(Exception, match="Spark"):
        spark.execute(f"SELECT * FROM parquet.`{path}`").read_all()
    with pytest.raises(Exception):  # noqa: B017 - refused by the policy, whatever the text
        gw.query("rita", f"SELECT * FROM read_parquet('{path}')")


def test_datasets_read_names_the_qualified_tables() -> None:
    sql = ('WITH x AS (SELECT * FROM "a"."t") SELECT * FROM x '
           'JOIN (SELECT * FROM B.u) AS y ON true')
    assert datasets_read(sql) == {"a", "b"}
    assert datasets_read("SELECT 1") == set()


BAD = [
    ('{type: sprak, master: "local[2]"}', "Did you mean 'spark'"),
    ('{type: spark, mastr: "local[2]"}', "Did you mean 'master'"),
    ("{type: spark}", "exactly one of 'master'"),
    ('{type: spark, master: "local[2]", remote: "sc://h:15002"}', "exactly one of 'master'"),
    ('{type: spark, remote: "http://h:15002"}', "Spark Connect URL"),
    ('{type: duckdb, master: "local[2]"}', "takes no 'master'"),
]


@pytest.mark.parametrize("engine,message", BAD)
def test_engine_key_errors_name_the_line(engine: str, message: str) -> None:
    text = POLICY.replace('{type: spark, master: "local[2]"}', engine, 1)
    with pytest.raises(PolicyError, match=message) as info:
        parse_policy(text, base_dir="/tmp")
    assert info.value.line == 5, str(info.value)


def test_spark_reads_only_the_formats_it_can(tmp_path: Path) -> None:
    text = POLICY.replace("format: parquet, path: data/people.parquet",
                          "format: duckdb, path: data/x.duckdb, table: people", 1)
    with pytest.raises(PolicyError, match="Spark engine.*not 'duckdb'"):
        parse_policy(text, base_dir=str(tmp_path))
    spec = parse_policy(POLICY, base_dir=str(tmp_path)).datasets["oncology"].engine
    assert spec is not None and (spec.type, spec.master, spec.remote) == (
        "spark", "local[2]", None)
    assert parse_policy(POLICY, base_dir=str(tmp_path)).datasets["registry"].engine is None


def test_a_replaced_policy_gets_its_own_spark_tables(gw: SparkGateway) -> None:
    """The engines of the old and the new policy share the Spark session: retiring
    the old one must not drop the tables the new one reads."""
    sql = "SELECT site, COUNT(*) AS n FROM oncology.visits GROUP BY site ORDER BY site"
    expected = gw.query("rita", sql).to_pylist()
    old = gw.domain.engine
    text = POLICY.replace("domain: {name: spark_clinic}",
                          "domain: {name: spark_clinic, description: replaced}")
    done = gw.domain.replace_policy(text, by="owner")
    assert done.changed and gw.domain.engine is not old
    assert old.closed  # retired: nothing was reading it
    assert gw.query("rita", sql).to_pylist() == expected
    assert gw.query("rita", sql.replace("oncology", "registry")).to_pylist() == expected
