"""The audit log: records written through a real gateway, and its hash chain."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.audit import GENESIS, LOGIN_FAILURE, QUERY, AuditLog
from gateway.cli import main
from gateway.state import STATE_FILE, StateStore
from tests.conftest import TEST_SALT


def run_query(conn, sql):  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetch_arrow_table()
    finally:
        cur.close()


def last_record(gateway, user, kind=QUERY):  # type: ignore[no-untyped-def]
    records = [r for r in gateway.domain.audit.records(user=user) if r.kind == kind]
    assert records, f"no {kind} record for {user}"
    return records[-1]


def test_raw_query_is_audited_with_rows_and_display_sql(gateway, connect):
    sql = "SELECT id, job FROM registry.staff"
    table = run_query(connect("rita"), sql)
    record = last_record(gateway, "rita")
    d = record.details
    assert d["role"] == "researcher"
    assert d["sql"] == sql
    assert d["tables"] == [{"dataset": "registry", "table": "staff", "mode": "raw"}]
    assert d["rows"] == table.num_rows == 3
    assert d["error"] is None and d["epsilon"] == 0
    assert d["duration_ms"] >= 0
    # The masked column's secret salt is shown by name, never by value.
    assert "{secret.salt}" in d["rewritten_sql"]
    assert TEST_SALT not in json.dumps(record.to_json())


def test_refused_query_is_audited_with_the_error(gateway, connect):
    conn = connect("carl")
    with pytest.raises(Exception):  # noqa: B017 - the driver's error type
        run_query(conn, "SELECT * FROM secret.salaries")
    d = last_record(gateway, "carl").details
    assert d["sql"] == "SELECT * FROM secret.salaries"
    assert d["error"] and d["rows"] is None and d["rewritten_sql"] is None


def test_dp_query_is_audited_once_with_the_charge(gateway, connect):
    name = "audit_dp_analyst"
    gateway.domain.store.add_user(name, "analyst", "analyst-password", {})
    try:
        before = len(gateway.domain.audit.records(user=name))
        conn = connect(name, "analyst-password")
        run_query(conn, "SELECT COUNT(*) AS n FROM oncology.screenings")
        records = gateway.domain.audit.records(user=name)
        assert len(records) == before + 1
        d = records[-1].details
        assert d["tables"] == [{"dataset": "oncology", "table": "screenings", "mode": "dp"}]
        assert d["epsilon"] == pytest.approx(0.1)
        assert d["rows"] == 1 and d["error"] is None
    finally:
        gateway.domain.store.remove_user(name)


def test_login_failure_is_audited(gateway):
    import adbc_driver_flightsql.dbapi as flight_sql

    with pytest.raises(Exception):  # noqa: B017 - the driver's error type
        conn = flight_sql.connect(gateway.url, db_kwargs={"username": "nosuch_audit_user",
                                                          "password": "whatever-pass"},
                                  autocommit=True)
        try:
            run_query(conn, "SELECT 1")
        finally:
            conn.close()
    record = last_record(gateway, "nosuch_audit_user", LOGIN_FAILURE)
    assert record.details == {"reason": "unknown_user"}


def test_chain_is_intact_after_gateway_queries(gateway, connect):
    run_query(connect("rita"), "SELECT code FROM registry.regions")
    result = gateway.domain.audit.verify()
    assert result.ok, str(result)
    assert str(result) == f"{result.count} records, chain intact"


# ---------------------------------------------------------------- the chain, offline


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with StateStore(tmp_path / "state") as store:
        yield store


def test_first_record_chains_to_genesis_and_concurrent_writes_stay_linear(store):
    log = AuditLog(store)
    threads = [threading.Thread(target=lambda i=i: [log.login_failure(f"u{i}", "wrong_password")
                                                   for _ in range(10)]) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = log.records()
    assert [r.id for r in records] == list(range(1, 81))
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    assert log.verify().ok


def test_the_log_is_append_only_through_sqlite(store):
    AuditLog(store).login_failure("x", "unknown_user")
    con = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("UPDATE audit_log SET user_name = 'y'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("DELETE FROM audit_log")
    con.close()


def _tampered_copy(gateway, tmp_path: Path, *statements: str) -> Path:  # type: ignore[no-untyped-def]
    copy = tmp_path / "copy"
    copy.mkdir()
    source = sqlite3.connect(gateway.domain.store.path)
    target = sqlite3.connect(copy / STATE_FILE)
    source.backup(target)
    source.close()
    target.execute("DROP TRIGGER audit_log_append_only_update")
    target.execute("DROP TRIGGER audit_log_append_only_delete")
    for statement in statements:
        target.execute(statement)
    target.commit()
    target.close()
    return copy


def _cli(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def audited(gateway, connect):  # type: ignore[no-untyped-def]
    """The gateway with at least three audit records."""
    for sql in ("SELECT code FROM registry.regions", "SELECT label FROM registry.codes",
                "SELECT kind FROM registry.events"):
        run_query(connect("rita"), sql)
    return gateway


def test_verify_passes_on_an_untouched_copy(audited, tmp_path, capsys):
    copy = _tampered_copy(audited, tmp_path)
    code, out, err = _cli(capsys, "audit", "verify", "--data-dir", str(copy))
    assert code == 0, err
    assert out.strip().endswith("records, chain intact")


def test_verify_fails_after_an_update(audited, tmp_path, capsys):
    target = audited.domain.audit.records(user="rita")[-2].id
    copy = _tampered_copy(audited, tmp_path, "UPDATE audit_log SET details = "
                          f"replace(details, 'registry', 'other') WHERE id = {target}")
    code, out, err = _cli(capsys, "audit", "verify", "--data-dir", str(copy))
    assert code == 1
    assert f"record {target}:" in err and "content does not match" in err


def test_verify_fails_after_a_delete(audited, tmp_path, capsys):
    target = audited.domain.audit.records(user="rita")[-2].id
    copy = _tampered_copy(audited, tmp_path, f"DELETE FROM audit_log WHERE id = {target}")
    code, _, err = _cli(capsys, "audit", "verify", "--data-dir", str(copy))
    assert code == 1 and f"record {target}:" in err and "deleted" in err


def test_verify_fails_after_deleting_the_last_record(audited, tmp_path, capsys):
    copy = _tampered_copy(audited, tmp_path,
                          "DELETE FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log)")
    code, _, err = _cli(capsys, "audit", "verify", "--data-dir", str(copy))
    assert code == 1 and "deleted from the end" in err


def test_verify_fails_after_a_hash_is_replaced(audited, tmp_path, capsys):
    target = audited.domain.audit.records(user="rita")[-2].id
    copy = _tampered_copy(audited, tmp_path,
                          f"UPDATE audit_log SET hash = '{'0' * 64}' WHERE id = {target}")
    code, _, err = _cli(capsys, "audit", "verify", "--data-dir", str(copy))
    assert code == 1 and f"record {target}:" in err


def test_show_formats_and_filters(audited, tmp_path, capsys):
    copy = _tampered_copy(audited, tmp_path)
    code, out, _ = _cli(capsys, "audit", "show", "--data-dir", str(copy), "--user", "rita",
                        "--limit", "2", "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert len(records) == 2 and {r["user"] for r in records} == {"rita"}
    assert records[0]["id"] < records[1]["id"]
    assert records[-1]["sql"] == "SELECT kind FROM registry.events"
    code, out, _ = _cli(capsys, "audit", "show", "--data-dir", str(copy), "--format", "csv",
                        "--limit", "3")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3
    assert rows[-1]["tables"] == "registry.events:raw" and rows[-1]["rows"] == "10"
    code, out, _ = _cli(capsys, "audit", "show", "--data-dir", str(copy), "--limit", "1")
    assert code == 0 and "registry.events:raw" in out and "rows=10" in out
    code, _, err = _cli(capsys, "audit", "show", "--data-dir", str(copy), "--limit", "0")
    assert code == 2 and "--limit" in err


def test_verify_needs_an_existing_store(tmp_path, capsys):
    code, _, err = _cli(capsys, "audit", "verify", "--data-dir", str(tmp_path / "none"))
    assert code == 2 and "state.db" in err
