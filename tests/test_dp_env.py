"""A small dp-mode environment for the dp tests: policy, engine, ledger, service.

Built directly from the engine and connectors (not through a server) so that
each test sees exactly the dp API the domain calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import pytest
from argon2 import PasswordHasher

import connectors
from gateway.dp import PrivateQueries
from gateway.engine import Engine
from gateway.ledger import Ledger
from gateway.snapshots import ContributionBound
from gateway.state import StateStore
from policy.access import dp_units
from policy.loader import parse_policy
from policy.model import Policy
from policy.principal import Principal

POLICY = """\
version: 1
domain: {name: dp_test}
datasets:
  health:
    tables:
      visits:
        source: {format: parquet, path: visits.parquet}
        privacy_unit: patient_id
        max_rows_per_unit: 2
        row_filter: "consent"
        columns:
          patient_id: {hidden: true}
          cost: {lower: 0, upper: 100}
          age: {lower: 0, upper: 100}
          name: {mask: "'***'"}
      people:
        source: {format: parquet, path: people.parquet}
        privacy_unit: id
        max_rows_per_unit: 1
        columns:
          score: {lower: 0, upper: 10}
      crowded:
        source: {format: parquet, path: crowded.parquet}
        privacy_unit: patient_id
        max_rows_per_unit: 1
        columns:
          cost: {lower: 0, upper: 100}
      counts:
        source: {format: parquet, path: counts.parquet}
        privacy_unit: id
        max_rows_per_unit: 1
      keyed:
        source: {format: parquet, path: counts.parquet}
        privacy_unit: id
        max_rows_per_unit: 1
        public_keys: {g: [0, 1, 2, 3, 500, 501]}
  open:
    tables:
      plain:
        source: {format: parquet, path: people.parquet}
roles:
  analyst:
    datasets:
      health: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 5.0, delta: 1.0e-4}}
      open: {mode: raw}
  poor:
    datasets:
      health: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 1.0, delta: 0.0}}
  statistician:
    datasets:
      health: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 1000.0, delta: 0.5}}
"""

ROWS = 2_000


def write_data(root: Path) -> None:
    con = duckdb.connect()
    # 1,000 patients with 2 visits each; 90 % consented; 4 sites of 500 visits each.
    con.execute(f"""
        COPY (SELECT i // 2 AS patient_id, 'site' || (i % 4) AS site,
                     (i % 50)::DOUBLE AS cost, (i % 90) AS age, 'n' || i AS name,
                     (i % 10) <> 0 AS consent
              FROM range({ROWS}) r(i)) TO '{root / "visits.parquet"}' (FORMAT parquet)""")
    con.execute(f"""
        COPY (SELECT i AS id, i % 2 AS grp, (i % 10)::DOUBLE AS score
              FROM range({ROWS}) r(i)) TO '{root / "people.parquet"}' (FORMAT parquet)""")
    # Two rows for patient 0 although the policy says at most one.
    con.execute(f"""
        COPY (SELECT CASE WHEN i = 1 THEN 0 ELSE i END AS patient_id, 10.0 AS cost
              FROM range(100) r(i)) TO '{root / "crowded.parquet"}' (FORMAT parquet)""")
    # 200 groups of exactly 1,000 people each.
    con.execute(f"""
        COPY (SELECT i AS id, i % 200 AS g FROM range(200000) r(i))
        TO '{root / "counts.parquet"}' (FORMAT parquet)""")
    con.close()


@dataclass
class DpEnv:
    policy: Policy
    engine: Engine
    store: StateStore
    ledger: Ledger
    dp: PrivateQueries
    schemas: dict[tuple[str, str], dict[str, str]]

    def principal(self, user: str = "alice", role: str = "analyst") -> Principal:
        return Principal(user, role)

    def plan(self, sql: str, user: str = "alice", role: str = "analyst", **kw):  # type: ignore[no-untyped-def]
        return self.dp.plan(sql, policy=self.policy, principal=self.principal(user, role),
                            schemas=self.schemas, **kw)

    def run(self, sql: str, user: str = "alice", role: str = "analyst", **kw):  # type: ignore[no-untyped-def]
        return self.dp.execute(self.plan(sql, user, role, **kw))

    def close(self) -> None:
        self.engine.close()
        self.store.close()


def open_env(root: Path, *, data: Path | None = None, policy_text: str = POLICY,
             snapshots: bool = True) -> DpEnv:
    """The environment over the sample data (written to ``data`` when missing).

    As :func:`gateway.domain.build_engine` does, the engine keeps a bounded
    snapshot of each dp table with a file source, unless ``snapshots`` is false.
    """
    data = data or root
    if not (data / "visits.parquet").exists():
        write_data(data)
    policy = parse_policy(policy_text, base_dir=str(data))
    engine = Engine(root / "engine")
    units = dp_units(policy) if snapshots else {}
    for ds_name, dataset in sorted(policy.datasets.items()):
        for i, (t_name, table) in enumerate(sorted(dataset.tables.items())):
            options = {k: v for k, v in asdict(table.source).items() if v is not None}
            plan = connectors.get(table.source.format).plan(
                options, base_dir=data, alias=f"src_{ds_name}_{i}")
            unit = units.get((ds_name, t_name))
            engine.add_table(ds_name, t_name, plan,
                             bound=ContributionBound(*unit) if unit else None)
    engine.start()
    store = StateStore(root / "state", hasher=PasswordHasher(memory_cost=8192))
    ledger = Ledger(store)
    schemas = {key: engine.columns(*key) for key in engine.tables()}
    return DpEnv(policy, engine, store, ledger, PrivateQueries(engine, ledger), schemas)


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = open_env(tmp_path)
    yield e
    e.close()


def test_environment_answers_a_dp_count(env: DpEnv) -> None:
    table = env.run("SELECT COUNT(*) AS n FROM visits")
    assert table.column_names == ["n"]
    assert table.schema.metadata[b"stockade.dp.epsilon_spent"] == b"0.5"
