"""The ``postgres`` connector against a real PostgreSQL 15 server, through the gateway.

A session fixture starts PostgreSQL (as the unprivileged ``postgres`` user, in a
temporary directory, password authentication), loads ``public.visits`` and serves
it through a real gateway: raw, from a ``query:`` source, and in ``dp`` mode. The
DSN is read from the environment and must never show in an error, the status or
the log; filters and projections are pushed down (the engine's plan); a dead
database gives a clear error at query time and when the engine is built.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConnectorError, PolicyError
from policy.loader import parse_policy
from policy.principal import Principal
from tests.pg_server import PostgresServer
from tests.test_admin_actions import Client

PG_USER = "stockade_reader"
PG_PASSWORD = "Rd-s3cr3t-Pw"
ENV = "STOCKADE_TEST_PG_DSN"
ROWS = 3_000
META = b"stockade.dp."
PASSWORDS = {"owner": "owner-password", "rita": "rita-password", "ann": "ann-password"}

POLICY = """\
version: 1
domain: {name: pg_clinic, description: A clinic whose data lives in PostgreSQL}
limits: {max_rows: 1000000, timeout_s: 60}
datasets:
  clinic:
    tables:
      visits:
        source: {format: postgres, dsn: {"$env": STOCKADE_TEST_PG_DSN}, table: public.visits}
      per_site:
        source:
          format: postgres
          dsn: {"$env": STOCKADE_TEST_PG_DSN}
          query: "SELECT site, count(*) AS n FROM public.visits GROUP BY site"
  study:
    tables:
      visits:
        source: {format: postgres, dsn: {"$env": STOCKADE_TEST_PG_DSN}, table: public.visits}
        privacy_unit: patient_id
        max_rows_per_unit: 3
        columns:
          patient_id: {hidden: true}
          cost: {lower: 0, upper: 50}
          age: {lower: 0, upper: 90}
roles:
  researcher:
    datasets:
      clinic: {mode: raw}
  analyst:
    datasets:
      study: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 5.0, delta: 1.0e-6}}
  owner: {admin: true}
"""


def expected_rows() -> list[tuple[int, int, str, float, int]]:
    """The rows of public.visits, as generated below: (id, patient_id, site, cost, age)."""
    return [(i, (i - 1) // 3, f"site{i % 4}", float(i % 50), i % 90) for i in range(1, ROWS + 1)]


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.psql(f"""
            CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}';
            CREATE TABLE public.visits AS
              SELECT i AS id, (i - 1) / 3 AS patient_id, 'site' || (i % 4) AS site,
                     (i % 50)::float8 AS cost, i % 90 AS age
              FROM generate_series(1, {ROWS}) AS g(i);
            GRANT SELECT ON public.visits TO {PG_USER};
            CREATE TABLE public.payroll AS SELECT 1 AS salary;
        """)
        yield server
    finally:
        server.close()


class PgGateway:
    def __init__(self, url: str, domain: Any, root: Path) -> None:
        self.url = url
        self.domain = domain
        self.root = root

    def connect(self, user: str):  # type: ignore[no-untyped-def]
        import adbc_driver_flightsql.dbapi as flight_sql

        return flight_sql.connect(self.url, db_kwargs={"username": user,
                                                       "password": PASSWORDS[user]},
                                  autocommit=True)

    def query(self, user: str, sql: str):  # type: ignore[no-untyped-def]
        conn = self.connect(user)
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return cur.fetch_arrow_table()
        finally:
            conn.close()


@pytest.fixture(scope="session")
def pg_gateway(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PgGateway]:
    from gateway.serving import start_server
    from gateway.settings import load_settings

    root = tmp_path_factory.mktemp("pg_domain")
    (root / "policy.yaml").write_text(POLICY)
    os.environ[ENV] = pg.dsn(PG_USER, PG_PASSWORD)
    os.environ.pop("STOCKADE_ADMIN_PASSWORD", None)
    settings = load_settings({"policy": str(root / "policy.yaml"),
                              "data_dir": str(root / "state"), "port": 0,
                              "memory_limit": "1GB"}, env={})
    server, domain, url, admin_password = start_server(settings)
    try:
        for name, role in (("rita", "researcher"), ("ann", "analyst")):
            domain.store.add_user(name, role, PASSWORDS[name], {})
        domain.store.set_password("owner", PASSWORDS["owner"]) if _has_user(
            domain, "owner") else domain.store.add_user("owner", "owner", PASSWORDS["owner"], {})
        yield PgGateway(url, domain, root)
    finally:
        server.shutdown()
        domain.close()
        os.environ.pop(ENV, None)


def _has_user(domain: Any, name: str) -> bool:
    try:
        domain.store.get_user(name)
        return True
    except LookupError:
        return False


def _error_text(gateway: PgGateway, user: str, sql: str) -> str:
    with pytest.raises(Exception) as info:
        gateway.query(user, sql)
    return str(info.value)


def _no_secret(text: str, pg: PostgresServer) -> None:
    assert PG_PASSWORD not in text
    assert pg.dsn(PG_USER, PG_PASSWORD) not in text
    assert f"{PG_USER}:" not in text


# ---------------------------------------------------------------- raw


def test_raw_table_equals_the_source(pg_gateway: PgGateway) -> None:
    table = pg_gateway.query("rita", "SELECT * FROM clinic.visits ORDER BY id")
    assert table.column_names == ["id", "patient_id", "site", "cost", "age"]
    assert [tuple(r.values()) for r in table.to_pylist()] == expected_rows()


def test_filters_and_aggregates_match_the_source(pg_gateway: PgGateway) -> None:
    table = pg_gateway.query(
        "rita", "SELECT id, age FROM clinic.visits WHERE site = 'site1' AND age > 30 ORDER BY id")
    want = [(r[0], r[4]) for r in expected_rows() if r[2] == "site1" and r[4] > 30]
    assert [(r["id"], r["age"]) for r in table.to_pylist()] == want
    table = pg_gateway.query("rita", "SELECT site, n FROM clinic.per_site ORDER BY site")
    counts = {s: sum(1 for r in expected_rows() if r[2] == s) for s in ("site0", "site1",
                                                                        "site2", "site3")}
    assert [(r["site"], r["n"]) for r in table.to_pylist()] == sorted(counts.items())


def test_filters_and_projections_are_pushed_down(pg_gateway: PgGateway) -> None:
    domain = pg_gateway.domain
    plan = domain.plan(Principal("rita", "researcher"),
                       "SELECT age FROM clinic.visits WHERE site = 'site1' AND age > 30")
    with domain.pinned() as state:
        cur = state.engine.cursor()
        try:
            text = "\n".join(str(row[1]) for row in cur.execute("EXPLAIN " + plan.sql).fetchall())
        finally:
            cur.close()
    scan = text[text.index("POSTGRES_SCAN"):]
    assert "Table: visits" in scan
    projections = scan[scan.index("Projections:"):scan.index("Filters:")]
    assert "age" in projections and "site" in projections
    assert "cost" not in projections and "patient_id" not in projections
    filters = scan[scan.index("Filters:"):]
    assert "site='site1'" in filters.replace(" ", "") and "age>30" in filters.replace(" ", "")


def test_analysts_cannot_reach_the_database_around_the_policy(
        pg_gateway: PgGateway, pg: PostgresServer) -> None:
    for sql in ("SELECT * FROM postgres_query('src_0_0_per_site', 'SELECT * FROM payroll')",
                f"SELECT * FROM postgres_scan('{pg.dsn('postgres', 'x')}', 'public', 'payroll')",
                "SELECT * FROM src_0_1_visits.public.payroll",
                "ATTACH 'postgresql://x@127.0.0.1/postgres' AS other (TYPE postgres)"):
        text = _error_text(pg_gateway, "rita", sql)
        _no_secret(text, pg)
        assert "salary" not in text
    # The analyst of the dp dataset sees no raw rows of it.
    text = _error_text(pg_gateway, "ann", "SELECT * FROM study.visits")
    _no_secret(text, pg)


# ---------------------------------------------------------------- dp


def test_dp_answers_with_metadata_and_exact_accounting(pg_gateway: PgGateway) -> None:
    first = pg_gateway.query("ann", "SELECT count(*) AS n FROM study.visits")
    assert first.num_rows == 1
    spent = float(first.schema.metadata[META + b"epsilon_spent"])
    remaining = float(first.schema.metadata[META + b"epsilon_remaining"])
    assert spent == 0.5
    assert remaining == pytest.approx(5.0 - spent, abs=1e-9)
    scale = float(first.schema.field("n").metadata[META + b"scale"])
    assert scale > 0
    assert abs(first.column("n")[0].as_py() - ROWS) < 25 * scale + 1

    second = pg_gateway.query("ann", "SELECT site, avg(age) AS a FROM study.visits GROUP BY site")
    assert float(second.schema.metadata[META + b"epsilon_remaining"]) == pytest.approx(
        remaining - float(second.schema.metadata[META + b"epsilon_spent"]), abs=1e-9)
    assert sorted(second.column("site").to_pylist()) == ["site0", "site1", "site2", "site3"]
    for value in second.column("a").to_pylist():
        assert 0 <= value <= 90


# ---------------------------------------------------------------- secrets


def test_status_shows_the_table_never_the_dsn(pg_gateway: PgGateway, pg: PostgresServer) -> None:
    owner = Client(pg_gateway.url, "owner", PASSWORDS["owner"])
    try:
        status = owner("stockade.status")
    finally:
        owner.close()
    sources = {(d["dataset"], t["table"]): t["source"]
               for d in status["datasets"] for t in d["tables"]}
    assert sources[("clinic", "visits")] == "postgres public.visits"
    assert sources[("clinic", "per_site")] == "postgres (query)"
    assert sources[("study", "visits")] == "postgres public.visits"
    _no_secret(json.dumps(status), pg)


def test_dsn_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(PolicyError) as info:
        parse_policy(POLICY, base_dir=str(tmp_path))
    assert ENV in str(info.value)
    monkeypatch.setenv(ENV, "postgresql://u:Env-Only-Pw@db.example/h")
    policy = parse_policy(POLICY, base_dir=str(tmp_path))
    source = policy.datasets["clinic"].tables["visits"].source
    assert source.dsn == "postgresql://u:Env-Only-Pw@db.example/h"
    assert (source.format, source.table) == ("postgres", "public.visits")


def test_a_source_needs_a_table_or_a_query(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    bad = POLICY.replace("table: public.visits}", "}", 1)
    monkeypatch.setenv(ENV, "postgresql://u@h/d")
    with pytest.raises(PolicyError, match="either 'table: SCHEMA.TABLE' or 'query"):
        parse_policy(bad, base_dir=str(tmp_path))


def test_secrets_are_redacted_while_any_engine_serves_them() -> None:
    from connectors.base import SourcePlan
    from connectors.postgres import dsn_secrets
    from gateway.engine import _register_secrets, redact

    dsn = "host=db.example user=u password='Kv 9x' dbname=h"
    assert dsn_secrets(dsn) == (dsn, "Kv 9x")
    url = "postgresql://u:p%40ss@db.example/h"
    assert set(dsn_secrets(url)) == {url, "p@ss", "p%40ss"}
    plans = {("d", "t"): SourcePlan("SELECT 1", secrets=dsn_secrets(url))}
    _register_secrets(plans, True)  # the engine being retired
    _register_secrets(plans, True)  # its successor
    _register_secrets(plans, False)  # the retired one closes
    try:
        text, tables = redact(f'Unable to connect to Postgres at "{url}": p@ss p%40ss')
        assert tables == ["d.t"] and "p@ss" not in text and "p%40ss" not in text
    finally:
        _register_secrets(plans, False)
    assert redact(url) == (url, [])


# ---------------------------------------------------------------- a dead database


def test_a_dead_database_gives_a_clear_error(
        pg_gateway: PgGateway, pg: PostgresServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from gateway.domain import build_engine

    assert pg_gateway.query("rita", "SELECT count(*) AS n FROM clinic.visits")["n"][0].as_py() \
        == ROWS
    caplog.set_level(logging.DEBUG)
    pg.stop()
    try:
        text = _error_text(pg_gateway, "rita", "SELECT count(*) FROM clinic.visits")
        assert "cannot connect" in text
        assert "clinic.visits" in text
        assert "UNAVAILABLE" in text.upper()
        _no_secret(text, pg)
        text = _error_text(pg_gateway, "ann",
                           "SELECT count(*) AS n FROM study.visits WHERE age > 10")
        assert "cannot connect" in text and "study.visits" in text
        _no_secret(text, pg)

        # Building an engine over the dead database fails as clearly.
        policy = parse_policy(POLICY, base_dir=str(tmp_path))
        with pytest.raises(ConnectorError) as info:
            build_engine(policy, tmp_path / "engine")
        message = str(info.value)
        assert "cannot connect to its database" in message and "(postgres " in message
        assert message.startswith(("Table 'clinic.", "Table 'study."))
        _no_secret(message, pg)
        for record in caplog.records:
            _no_secret(record.getMessage(), pg)
    finally:
        pg.start()
    # The gateway reads the database again once it is back.
    for attempt in itertools.count():
        try:
            table = pg_gateway.query("rita", "SELECT count(*) AS n FROM clinic.visits")
            break
        except Exception:
            if attempt >= 3:
                raise
    assert table["n"][0].as_py() == ROWS
