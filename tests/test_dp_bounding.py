"""Contribution bounds in dp mode that no write can make stale (gateway.snapshots).

Each dp query either reads a bounded snapshot (files and copies: at most
``max_rows_per_unit`` rows per unit by construction, rebuilt when the source's
*content* changes) or samples in the query (live sources); values are always
clamped. The exact aggregates a query computed before noise are observed by
running the SQL it executed (recorded by :class:`Lab`) again on the engine:
for a count of units that is exact whatever the sample; noisy answers are
checked within 30 noise scales (a Laplace draw exceeds that with probability
e^-30).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from argon2 import PasswordHasher

import connectors
from connectors.base import SourcePlan
from gateway.domain import Domain, build_engine
from gateway.dp import PrivateQueries
from gateway.engine import Engine, EngineLimits
from gateway.errors import ConfigError, StockadeError, TableNotFoundError
from gateway.ledger import Ledger
from gateway.settings import load_settings
from gateway.snapshots import CATALOG_PREFIX, ContributionBound, content_digest
from gateway.state import StateStore
from policy.loader import parse_policy
from policy.model import Policy
from policy.principal import Principal

UNITS = 400
EPSILON = 1.0
SAMPLING = "ROW_NUMBER() OVER (PARTITION BY u ORDER BY __stockade_random)"
CLAMP = 'CASE WHEN "v0" < 0.0 THEN 0.0 WHEN "v0" > 10.0 THEN 10.0 ELSE "v0" END'

POLICY = """\
version: 1
domain: {{name: bounding}}
datasets:
  lab:
    tables:
      t:
        source: {source}
        privacy_unit: pid
        max_rows_per_unit: 1
        columns:
          v: {{lower: 0, upper: 10}}
  open:
    tables:
      t:
        source: {source}
roles:
  analyst:
    datasets:
      lab: {{mode: dp, epsilon_per_query: {epsilon}, budget: {{epsilon: 1000, delta: 0.5}}}}
  reader:
    datasets:
      open: {{mode: raw}}
  owner: {{admin: true}}
"""


@dataclass
class Lab:
    """A domain's engine (built as the gateway builds it) and its dp service."""

    policy: Policy
    engine: Engine
    store: StateStore
    dp: PrivateQueries
    schemas: dict[tuple[str, str], dict[str, str]]
    last_sql: list[str] = field(default_factory=list)  # what the last dp query executed

    def __post_init__(self) -> None:
        run = self.engine.execute

        def recorded(sql: str, *args: Any, **kwargs: Any) -> pa.RecordBatchReader:
            self.last_sql.append(sql)
            return run(sql, *args, **kwargs)

        self.engine.execute = recorded  # type: ignore[method-assign]

    def run(self, sql: str, user: str = "alice") -> pa.Table:
        plan = self.dp.plan(sql, policy=self.policy, principal=Principal(user, "analyst"),
                            schemas=self.schemas)
        self.last_sql.clear()
        return self.dp.execute(plan)

    def one(self, sql: str) -> tuple[Any, ...]:
        cur = self.engine.cursor()
        try:
            row = cur.execute(sql).fetchone()
        finally:
            cur.close()
        assert row is not None
        return tuple(row)

    def exact(self) -> dict[str, Any]:
        """The exact aggregates of the last dp query, from the SQL it executed."""
        (sql,) = self.last_sql
        cur = self.engine.cursor()
        try:
            table = cur.execute(sql).to_arrow_table()
        finally:
            cur.close()
        assert table.num_rows == 1
        return {name: table[name][0].as_py() for name in table.column_names}

    def close(self) -> None:
        self.engine.close()
        self.store.close()


def open_lab(root: Path, source: str, *, check_s: float = 0) -> Lab:
    policy = parse_policy(POLICY.format(source=source, epsilon=EPSILON), base_dir=str(root))
    engine = build_engine(policy, root / "engine",
                          limits=EngineLimits(memory_limit="1GB", threads=2,
                                              dp_snapshot_check_s=check_s))
    store = StateStore(root / "state", hasher=PasswordHasher(memory_cost=8192))
    schemas = {key: engine.columns(*key) for key in engine.tables()}
    return Lab(policy, engine, store, PrivateQueries(engine, Ledger(store)), schemas)


@pytest.fixture
def labs() -> Iterator[list[Lab]]:
    opened: list[Lab] = []
    yield opened
    for lab in opened:
        lab.close()


# -- a live source: SQLite in WAL mode ------------------------------------------------


def write_sqlite(path: Path, extra: int = 0) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (pid INTEGER, v REAL)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, 2.0) for i in range(UNITS)])
    con.executemany("INSERT INTO t VALUES (0, 10.0)", [()] * extra)
    con.commit()
    con.close()


def sqlite_source(path: Path) -> str:
    return f"{{format: sqlite, path: {path}, table: t}}"


def stat(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def test_a_wal_write_after_start_is_still_sampled_and_clamped(tmp_path: Path,
                                                              labs: list[Lab]) -> None:
    db = tmp_path / "lab.sqlite"
    write_sqlite(db)
    lab = open_lab(tmp_path, sqlite_source(db))
    labs.append(lab)
    with lab.engine.bounded_source("lab", "t") as snapshot:
        assert snapshot is None  # a live source has no snapshot
    lab.run("SELECT COUNT(*) AS n, SUM(v) AS s FROM t")
    before = stat(db)

    # One person adds 200 rows and a value far outside [0, 10]; the main file of a
    # WAL-mode database does not change (size, mtime and inode all stay).
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    con.executemany("INSERT INTO t VALUES (0, 10.0)", [()] * 200)
    con.execute("INSERT INTO t VALUES (1, 1000000.0)")
    con.commit()
    assert stat(db) == before
    assert lab.one('SELECT count(*), max(v) FROM "lab"."t" WHERE pid IN (0, 1)') \
        == (203, 1e6)  # the engine reads the write

    table = lab.run("SELECT COUNT(*) AS n, SUM(v) AS s FROM t", user="bob")
    (sql,) = lab.last_sql
    assert SAMPLING in sql and "<= 1" in sql and CLAMP in sql
    for _ in range(5):  # whichever rows the sample keeps
        exact = lab.exact()
        counts = [v for k, v in exact.items() if k.startswith("m_count")]
        sums = [v for k, v in exact.items() if k.startswith("m_sum")]
        assert counts == [UNITS]  # one row per unit: not 601
        # 398 units of 2.0, unit 0 gives 2.0 or 10.0, unit 1 gives 2.0 or 10.0 (clamped)
        assert len(sums) == 1 and float(sums[0]) in {800.0, 808.0, 816.0}
    n_scale = float(table.schema.field("n").metadata[b"stockade.dp.scale"])
    s_scale = float(table.schema.field("s").metadata[b"stockade.dp.scale"])
    assert abs(table["n"][0].as_py() - UNITS) < 30 * n_scale  # not 601
    assert abs(table["s"][0].as_py() - 808) < 30 * s_scale + 8  # not 2,808 nor 1e6


# -- files: a bounded snapshot, rebuilt when the content changes ------------------------


def write_parquet(path: Path, pids: list[int]) -> None:
    """A Parquet file whose size depends only on the number of rows."""
    table = pa.table({"pid": pa.array(pids, pa.int64()),
                      "v": pa.array([2.0] * len(pids), pa.float64())})
    pq.write_table(table, path, compression="none", use_dictionary=False,
                   write_statistics=False)


def rewrite_in_place(path: Path, pids: list[int]) -> None:
    """New content in the same file (same inode), with its size and mtime kept."""
    st = os.stat(path)
    other = path.with_suffix(".new")
    write_parquet(other, pids)
    data = other.read_bytes()
    other.unlink()
    assert len(data) == st.st_size  # a precondition of the attack
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_parquet_file_rewritten_with_the_same_size_and_mtime(tmp_path: Path,
                                                               labs: list[Lab]) -> None:
    path = tmp_path / "lab.parquet"
    write_parquet(path, list(range(UNITS)))
    lab = open_lab(tmp_path, f"{{format: parquet, path: {path}}}")
    labs.append(lab)
    with lab.engine.bounded_source("lab", "t") as first:
        assert first is not None and (first.unit, first.max_rows) == ("pid", 1)
    before = stat(path)

    # Unit 0 now has 200 rows; the file keeps its size, mtime and inode.
    crowded = [0] * 200 + list(range(200, UNITS))
    rewrite_in_place(path, crowded)
    assert stat(path) == before
    assert lab.one('SELECT count(*) FROM "lab"."t" WHERE pid = 0') == (200,)

    # Until the next check, queries read the snapshot of the old content: bounded.
    lab.run("SELECT COUNT(*) AS n FROM t")
    assert first.sql in lab.last_sql[0] and "ROW_NUMBER" not in lab.last_sql[0]
    assert list(lab.exact().values()) == [UNITS]

    changes = lab.engine.refresh_snapshots()
    with lab.engine.bounded_source("lab", "t") as second:
        assert second is not None
    assert [(c.dataset, c.table, c.before, c.after) for c in changes] == [
        ("lab", "t", first.name, second.name)]
    assert second.name != first.name and second.digest != first.digest
    assert lab.one(f"SELECT max(c), count(*) FROM (SELECT count(*) AS c FROM {second.sql} "
                   "GROUP BY pid)") == (1, UNITS - 199)
    lab.run("SELECT COUNT(*) AS n FROM t", user="bob")
    assert second.sql in lab.last_sql[0]
    assert list(lab.exact().values()) == [UNITS - 199]  # the new content, one row per unit

    # The name follows the content, not the metadata: a touch changes nothing, and
    # neither does writing the same bytes again.
    os.utime(path)
    assert lab.engine.refresh_snapshots() == []
    rewrite_in_place(path, crowded)
    assert lab.engine.refresh_snapshots() == []
    with lab.engine.bounded_source("lab", "t") as same:
        assert same == second


def test_the_background_check_swaps_in_new_content(tmp_path: Path, labs: list[Lab]) -> None:
    path = tmp_path / "lab.parquet"
    write_parquet(path, list(range(UNITS)))
    lab = open_lab(tmp_path, f"{{format: parquet, path: {path}}}", check_s=0.05)
    labs.append(lab)
    with lab.engine.bounded_source("lab", "t") as first:
        assert first is not None
    rewrite_in_place(path, [0] * 200 + list(range(200, UNITS)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lab.engine.bounded_source("lab", "t") as now:
            assert now is not None
            if now.name != first.name:
                break
        time.sleep(0.05)
    assert now.name != first.name
    assert lab.one(f"SELECT count(*) FROM {now.sql}") == (UNITS - 199,)


def test_a_frame_copied_at_start_has_a_snapshot_named_by_its_arrow_data(tmp_path: Path) -> None:
    frame = pa.table({"pid": [1, 1, 1, 2], "v": [1.0, 2.0, 3.0, 4.0]})
    names = []
    for i, data in enumerate((frame, frame, frame.slice(0, 3))):
        engine = Engine(tmp_path / f"e{i}")
        engine.add_table("lab", "t", SourcePlan("", arrow=data), bound=ContributionBound("PID"))
        engine.start()
        try:
            with engine.bounded_source("lab", "t") as snapshot:
                assert snapshot is not None and snapshot.unit == "pid"
                cur = engine.cursor()
                rows = cur.execute(f"SELECT pid, count(*) FROM {snapshot.sql} GROUP BY pid "
                                   "ORDER BY pid").fetchall()
                cur.close()
                assert rows == ([(1, 1), (2, 1)] if i < 2 else [(1, 1)])
                names.append(snapshot.name)
            assert engine.refresh_snapshots() == []  # a copy cannot change
        finally:
            engine.close()
    assert names[0] == names[1] != names[2]


# -- no data-dependent path ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "sqlite"])
def test_neighbouring_datasets_run_the_same_sql(tmp_path: Path, labs: list[Lab],
                                                kind: str) -> None:
    """One unit over its bound or not: the same SQL runs (no skip path, no timing channel)."""
    executed = []
    for name, extra in (("meets", 0), ("exceeds", 50)):
        root = tmp_path / name
        root.mkdir()
        if kind == "parquet":
            path = root / "lab.parquet"
            write_parquet(path, list(range(UNITS)) + [0] * extra)
            source = f"{{format: parquet, path: {path}}}"
        else:
            path = root / "lab.sqlite"
            write_sqlite(path, extra)
            source = sqlite_source(path)
        lab = open_lab(root, source)
        labs.append(lab)
        sqls = []
        for sql in ("SELECT COUNT(*) AS n, SUM(v) AS s FROM t",
                    "SELECT pid % 4 AS g, COUNT(*) AS n FROM t WHERE v > 1 GROUP BY pid % 4"):
            lab.run(sql)
            (ran,) = lab.last_sql
            sqls.append(ran)
        with lab.engine.bounded_source("lab", "t") as snapshot:
            if kind == "parquet":
                assert snapshot is not None and all(snapshot.sql in s for s in sqls)
                # The snapshot's name is its content's address: the one difference.
                sqls = [s.replace(snapshot.name, CATALOG_PREFIX + "…") for s in sqls]
            else:
                assert snapshot is None and all(SAMPLING in s for s in sqls)
        executed.append(sqls)
    assert executed[0] == executed[1]


# -- nobody can name a snapshot --------------------------------------------------------


def test_analysts_cannot_read_or_name_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "lab.parquet"
    write_parquet(path, list(range(UNITS)))
    lab = open_lab(tmp_path, f"{{format: parquet, path: {path}}}")
    lab.store.close()
    domain = Domain(lab.policy, lab.engine, StateStore(tmp_path / "domain-state",
                                                       hasher=PasswordHasher(memory_cost=8192)))
    try:
        with lab.engine.bounded_source("lab", "t") as snapshot:
            assert snapshot is not None
        file = lab.engine.work_dir / "dp-snapshots" / f"{snapshot.name}.duckdb"
        assert file.exists()
        attempts = [
            f"SELECT * FROM {snapshot.sql}",
            f'SELECT * FROM "{snapshot.name}".bounded',
            f"SELECT * FROM {snapshot.name}.main.bounded",
            "SELECT * FROM bounded",
            f"SELECT * FROM '{file}'",
            f"SELECT * FROM read_parquet('{file}')",
            "SELECT database_name FROM duckdb_databases()",
            f"ATTACH '{file}' AS x",
            f"DETACH {snapshot.name}",
        ]
        for role in ("owner", "reader", "analyst"):
            principal = Principal("eve", role)
            seen = {t.dataset for t in domain.catalog(principal)}
            assert not any(CATALOG_PREFIX in d for d in seen)
            for sql in attempts:
                with pytest.raises(StockadeError) as err:
                    domain.execute(principal, sql).read_all()
                assert snapshot.name not in str(err.value) or isinstance(
                    err.value, TableNotFoundError)
            for sql in attempts[:4]:  # the same refusal as for a table that does not exist
                with pytest.raises(TableNotFoundError) as named:
                    domain.plan(principal, sql)
                # A name of the same length that is nothing at all.
                made_up = sql.replace(snapshot.name, "x" * len(snapshot.name)).replace(
                    "bounded", "nothing")
                with pytest.raises(TableNotFoundError) as unknown:
                    domain.plan(principal, made_up)
                assert re.sub(r"'[^']*'", "'…'", str(named.value)) == \
                    re.sub(r"'[^']*'", "'…'", str(unknown.value))
    finally:
        domain.close()


# -- content, not metadata --------------------------------------------------------------


def test_a_glob_is_hashed_by_the_bytes_of_the_files_it_matches(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.csv").write_text("pid,v\n1,2\n")
    plan = connectors.get("csv").plan({"format": "csv", "path": "parts/*.csv"},
                                      base_dir=tmp_path, alias="s")
    first = content_digest(plan)
    os.utime(folder / "a.csv", ns=(1, 1))
    assert content_digest(plan) == first  # metadata alone changes nothing
    (folder / "notes.txt").write_text("not matched")
    assert content_digest(plan) == first
    (folder / "b.csv").write_text("pid,v\n3,4\n")
    second = content_digest(plan)
    assert second != first  # a new file of the glob
    (folder / "b.csv").write_text("pid,v\n3,5\n")  # same size, other bytes
    assert content_digest(plan) not in (first, second)
    assert connectors.get("sqlite").plan({"format": "sqlite", "path": "parts/a.csv",
                                          "table": "t"}, base_dir=tmp_path,
                                         alias="s").content is None  # live: no digest


@pytest.mark.parametrize("given, expected", [("0", 0.0), ("2.5", 2.5), (None, 60)])
def test_the_check_interval_is_a_setting(given: str | None, expected: float) -> None:
    flags = {"policy": "p.yaml", "data_dir": "/tmp/x", "dp_snapshot_check_s": given}
    assert load_settings(flags, env={}).dp_snapshot_check_s == expected


def test_a_negative_check_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "Bad value '-1' for --dp-snapshot-check-s: must be a number of seconds, 0 or more")):
        load_settings({"policy": "p.yaml", "data_dir": "/tmp/x", "dp_snapshot_check_s": "-1"},
                      env={})
