"""Shared fixtures: a real domain gateway on loopback over generated data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

TEST_POLICY = """\
version: 1
domain: {name: st_marys, description: "St Mary's test domain"}
limits: {max_rows: 10000000, timeout_s: 60}
secrets: {salt: {"$env": STOCKADE_TEST_SALT}}
datasets:
  oncology:
    description: Cancer screening results
    tags: [cancer, screening]
    tables:
      patients:
        source: {format: parquet, path: data/patients.parquet}
        privacy_unit: patient_id
        row_filter: "consent"
        columns:
          patient_id: {hidden: true}
          zip: {mask: "left(zip, 3) || '**'"}
      screenings:
        source: {format: parquet, path: data/screenings.parquet}
        privacy_unit: patient_id
        max_rows_per_unit: 5
        columns:
          patient_id: {hidden: true}
          age: {lower: 0, upper: 110}
  registry:
    description: Regional registry extracts in other formats
    tables:
      regions:
        source: {format: csv, path: data/regions.csv}
      events:
        source: {format: json, path: data/events.json}
      codes:
        source: {format: arrow, path: data/codes.arrow}
      staff:
        source: {format: duckdb, path: data/hr.duckdb, table: main.staff}
        columns:
          id: {mask: "sha256({secret.salt} || CAST(id AS VARCHAR))"}
  bulk:
    description: A large table for streaming tests
    tables:
      numbers:
        source: {format: parquet, path: data/numbers.parquet}
  secret:
    description: Nobody but the owner may read this
    tables:
      salaries:
        source: {format: parquet, path: data/salaries.parquet}
roles:
  researcher:
    datasets:
      oncology: {mode: raw}
      registry: {mode: raw}
      bulk: {mode: raw}
  clinician:
    limits: {max_rows: 100}
    datasets:
      oncology:
        mode: raw
        row_filter: "site = {user.site}"
        tables: {patients: {hidden: [zip]}}
  analyst:
    datasets:
      oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3.0, delta: 1.0e-6}}
  auditor:
    datasets:
      oncology: {mode: aggregate, min_group_size: 10}
  owner: {admin: true}
"""

USERS = {
    "owner": ("owner", "owner-password", {}),
    "rita": ("researcher", "rita-password", {}),
    "carl": ("clinician", "carl-password", {"site": "north"}),
    "ann": ("analyst", "ann-password", {}),
    "aud": ("auditor", "aud-password", {}),
}

NUMBERS_ROWS = 6_000_000
TEST_SALT = "pepper-4f1c9a"
os.environ.setdefault("STOCKADE_TEST_SALT", TEST_SALT)


def write_test_data(root: Path, *, screenings: int = 20_000) -> None:
    """The test domain's sources: every connector format, small except bulk.numbers."""
    from tests.sample_domain import generate

    generate(root, screenings)
    data = root / "data"
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT * FROM (VALUES ('north', 'Northern', 1200),
        ('south', 'Southern', 900), ('east', 'Eastern', 450), ('west', 'Western', 300))
        t(code, name, beds)) TO '{data / "regions.csv"}' (HEADER)""")
    con.execute(f"""COPY (SELECT range AS event_id, 'e' || range AS kind FROM range(10))
        TO '{data / "events.json"}' (FORMAT json)""")
    import pyarrow as pa
    import pyarrow.ipc as ipc

    codes = pa.table({"code": list(range(5)), "label": [f"C{i}" for i in range(5)]})
    with ipc.new_file(str(data / "codes.arrow"), codes.schema) as writer:
        writer.write_table(codes)
    hr = duckdb.connect(str(data / "hr.duckdb"))
    hr.execute("CREATE TABLE staff AS SELECT range AS id, 'nurse' AS job FROM range(3)")
    hr.close()
    con.execute(f"""COPY (SELECT range AS id, range % 1000 AS bucket, range * 0.5 AS half
        FROM range({NUMBERS_ROWS})) TO '{data / "numbers.parquet"}'""")
    con.execute(f"""COPY (SELECT 'alice' AS name, 99000 AS salary)
        TO '{data / "salaries.parquet"}'""")
    con.close()
    (root / "policy.yaml").write_text(TEST_POLICY)


@dataclass
class Gateway:
    url: str
    root: Path
    domain: object
    server: object

    def connect(self, user: str, password: str | None = None):  # type: ignore[no-untyped-def]
        import adbc_driver_flightsql.dbapi as flight_sql

        return flight_sql.connect(
            self.url,
            db_kwargs={"username": user, "password": password or USERS[user][1]},
            autocommit=True,
        )


@pytest.fixture(scope="session")
def test_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("domain")
    write_test_data(root)
    return root


@pytest.fixture(scope="session")
def gateway(test_root: Path) -> Iterator[Gateway]:
    from gateway.serving import start_server
    from gateway.settings import load_settings

    settings = load_settings({"policy": str(test_root / "policy.yaml"),
                              "data_dir": str(test_root / "state"), "port": 0,
                              "memory_limit": "2GB"}, env={})
    os.environ.pop("STOCKADE_ADMIN_PASSWORD", None)
    server, domain, url, _ = start_server(settings)
    store = domain.store
    for name, (role, password, attributes) in USERS.items():
        try:
            store.get_user(name)
            store.set_password(name, password)
            store.set_role(name, role)
        except LookupError:
            store.add_user(name, role, password, attributes)
    yield Gateway(url, test_root, domain, server)
    server.shutdown()
    domain.close()


@pytest.fixture
def connect(gateway: Gateway) -> Iterator[Callable[..., object]]:
    opened = []

    def _connect(user: str, password: str | None = None):  # type: ignore[no-untyped-def]
        conn = gateway.connect(user, password)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()
