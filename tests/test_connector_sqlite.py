"""The ``sqlite`` connector: a real SQLite file (made with Python's sqlite3) through the gateway."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConnectorError, PolicyError
from policy.loader import parse_policy

ROWS = 1_200
PASSWORDS = {"rita": "rita-password", "aud": "aud-password", "owner": "owner-password"}

POLICY = """\
version: 1
domain: {name: lite_clinic}
datasets:
  clinic:
    tables:
      visits:
        source: {format: sqlite, path: data/clinic.sqlite, table: visits}
        columns:
          name: {mask: "'***'"}
  audit:
    tables:
      visits:
        source: {format: sqlite, path: data/clinic.sqlite, table: visits}
        privacy_unit: id
roles:
  researcher:
    datasets:
      clinic: {mode: raw}
  auditor:
    datasets:
      audit: {mode: aggregate, min_group_size: 10}
  owner: {admin: true}
"""


def expected_rows() -> list[tuple[int, str, str, float]]:
    return [(i, f"n{i}", "north" if i % 3 else "south", i * 0.5) for i in range(ROWS)]


def write_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE visits (id INTEGER PRIMARY KEY, name TEXT, site TEXT, cost REAL)")
    con.executemany("INSERT INTO visits VALUES (?, ?, ?, ?)", expected_rows())
    con.commit()
    con.close()


class LiteGateway:
    def __init__(self, url: str, domain: Any, root: Path) -> None:
        self.url, self.domain, self.root = url, domain, root

    def query(self, user: str, sql: str):  # type: ignore[no-untyped-def]
        import adbc_driver_flightsql.dbapi as flight_sql

        conn = flight_sql.connect(self.url, db_kwargs={"username": user,
                                                       "password": PASSWORDS[user]},
                                  autocommit=True)
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return cur.fetch_arrow_table()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteGateway]:
    from gateway.serving import start_server
    from gateway.settings import load_settings

    root = tmp_path_factory.mktemp("lite_domain")
    write_db(root / "data" / "clinic.sqlite")
    (root / "policy.yaml").write_text(POLICY)
    settings = load_settings({"policy": str(root / "policy.yaml"),
                              "data_dir": str(root / "state"), "port": 0,
                              "memory_limit": "1GB"}, env={})
    server, domain, url, _ = start_server(settings)
    try:
        for name, role in (("rita", "researcher"), ("aud", "auditor")):
            domain.store.add_user(name, role, PASSWORDS[name], {})
        yield LiteGateway(url, domain, root)
    finally:
        server.shutdown()
        domain.close()


def test_raw_table_equals_the_file(lite: LiteGateway) -> None:
    table = lite.query("rita", "SELECT * FROM clinic.visits ORDER BY id")
    assert table.column_names == ["id", "name", "site", "cost"]
    want = [(i, "***", site, cost) for i, _, site, cost in expected_rows()]
    assert [tuple(r.values()) for r in table.to_pylist()] == want
    table = lite.query("rita", "SELECT id FROM clinic.visits WHERE site = 'south' AND id < 30")
    assert sorted(table.column("id").to_pylist()) == list(range(0, 30, 3))


def test_aggregate_table_answers_groups_only(lite: LiteGateway) -> None:
    table = lite.query("aud", "SELECT site, count(*) AS n, sum(cost) AS c FROM audit.visits "
                              "GROUP BY site ORDER BY site")
    rows = expected_rows()
    want = [(s, sum(1 for r in rows if r[2] == s), sum(r[3] for r in rows if r[2] == s))
            for s in ("north", "south")]
    assert [(r["site"], r["n"], r["c"]) for r in table.to_pylist()] == want
    with pytest.raises(Exception, match="(?i)aggregate|group"):
        lite.query("aud", "SELECT * FROM audit.visits")


def test_analysts_cannot_open_other_files(lite: LiteGateway) -> None:
    """The sqlite scanner opens files through SQLite itself, not DuckDB's file system,
    so the engine's allowed_paths do not bind it: the policy's statement and
    function rules are what keep analysts to the attached table."""
    other = lite.root / "other.sqlite"
    write_db(other)
    for sql in (f"SELECT * FROM sqlite_scan('{other}', 'visits')",
                f"ATTACH '{other}' AS o (TYPE sqlite)",
                "SELECT * FROM src_0_0_visits.visits",
                f"SELECT * FROM read_csv('{lite.root / 'policy.yaml'}')"):
        with pytest.raises(Exception) as info:
            lite.query("rita", sql)
        assert "n1" not in str(info.value)


def test_a_missing_file_or_table_is_a_clear_error(tmp_path: Path) -> None:
    from gateway.domain import build_engine

    with pytest.raises(PolicyError, match="needs a 'table'"):
        parse_policy(POLICY.replace(", table: visits}", "}", 1), base_dir=str(tmp_path))
    write_db(tmp_path / "data" / "clinic.sqlite")
    policy = parse_policy(POLICY.replace("table: visits}", "table: vists}", 1),
                          base_dir=str(tmp_path))
    with pytest.raises(ConnectorError, match="clinic.visits.*vists"):
        build_engine(policy, tmp_path / "engine")
    (tmp_path / "data" / "clinic.sqlite").unlink()
    policy = parse_policy(POLICY, base_dir=str(tmp_path))
    with pytest.raises(ConnectorError, match="does not exist"):
        build_engine(policy, tmp_path / "engine")
