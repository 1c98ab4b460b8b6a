"""The owner's audit, status, budget and schema actions (gateway.admin_audit), and the
auditing of admin actions, through real Flight DoAction calls."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from gateway.admin import ACTIONS
from tests.conftest import NUMBERS_ROWS, TEST_POLICY, USERS
from tests.test_admin_actions import PASSWORD, Client

#: Rows of each table of the test data (tests/conftest.py, gateway/demo.py).
TABLE_ROWS = {
    ("bulk", "numbers"): NUMBERS_ROWS,
    ("oncology", "patients"): 5_000,
    ("oncology", "screenings"): 20_000,
    ("registry", "codes"): 5,
    ("registry", "events"): 10,
    ("registry", "regions"): 4,
    ("registry", "staff"): 3,
    ("secret", "salaries"): 1,
}
DP_QUERY = "SELECT COUNT(*) AS n FROM oncology.screenings"


def run_query(url: str, user: str, sql: str, password: str = PASSWORD) -> pa.Table:
    conn = flight_sql.connect(url, db_kwargs={"username": user, "password": password},
                              autocommit=True)
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            return cur.fetch_arrow_table()
        finally:
            cur.close()
    finally:
        conn.close()


def refused_query(url: str, user: str, sql: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the driver's error type
        run_query(url, user, sql)


@pytest.fixture
def owner(gateway) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    client = Client(gateway.url, "owner", USERS["owner"][1])
    yield client
    client.close()


def _creator(owner: Client) -> Callable[[str], str]:
    def create(role: str) -> str:
        name = f"aa_{role[:3]}_{uuid.uuid4().hex[:8]}"
        owner("stockade.users.create", {"name": name, "role": role, "password": PASSWORD,
                                        "attributes": {"site": "north"}})
        return name

    return create


@pytest.fixture
def new_user(owner) -> Callable[[str], str]:  # type: ignore[no-untyped-def]
    """Create a fresh user of a role through the API; returns their name."""
    return _creator(owner)


def records(client: Client, **filters: Any) -> list[dict[str, Any]]:
    return list(client("stockade.audit.query", {"limit": 10_000, **filters})["records"])


# ---------------------------------------------------------------- a gateway of our own


@dataclass
class OwnGateway:
    url: str
    domain: Any
    owner: Client
    new_user: Callable[[str], str]


@pytest.fixture
def own_gateway(test_root: Path, tmp_path: Path) -> Iterator[OwnGateway]:
    """A fresh gateway over the session's data, with its own state store."""
    from gateway.serving import start_server
    from gateway.settings import load_settings

    (tmp_path / "data").symlink_to(test_root / "data")
    (tmp_path / "policy.yaml").write_text(TEST_POLICY)
    settings = load_settings({"policy": str(tmp_path / "policy.yaml"),
                              "data_dir": str(tmp_path / "state"), "port": 0,
                              "memory_limit": "1GB"}, env={})
    server, domain, url, password = start_server(settings)
    owner = Client(url, "owner", password)
    try:
        yield OwnGateway(url, domain, owner, _creator(owner))
    finally:
        owner.close()
        server.shutdown()
        domain.close()


# ---------------------------------------------------------------- status


def test_status_counts_rows_users_requests_and_queries(gateway, owner, new_user):  # type: ignore[no-untyped-def]
    analyst = new_user("analyst")
    before = owner("stockade.status")
    me = Client(gateway.url, analyst, PASSWORD)
    try:
        me("stockade.request_budget", {"dataset": "oncology", "epsilon": 1, "reason": "r"})
    finally:
        me.close()
    refused_query(gateway.url, analyst, "SELECT * FROM secret.salaries")
    run_query(gateway.url, analyst, DP_QUERY)
    started = time.perf_counter()
    status = owner("stockade.status")
    elapsed = time.perf_counter() - started

    assert status["domain"] == "st_marys" and status["description"] == "St Mary's test domain"
    assert status["version"] == "0.1.0"
    assert status["uptime_s"] > 0
    started_at = datetime.fromisoformat(status["started_at"])
    assert abs(time.time() - status["uptime_s"] - started_at.timestamp()) < 5
    rows = {(d["dataset"], t["table"]): t["rows"]
            for d in status["datasets"] for t in d["tables"]}
    assert rows == TABLE_ROWS
    assert elapsed < 2.0, "row counts are kept between calls"
    (oncology,) = [d for d in status["datasets"] if d["dataset"] == "oncology"]
    assert oncology["tags"] == ["cancer", "screening"]
    assert oncology["description"] == "Cancer screening results"
    sources = {(d["dataset"], t["table"]): (t["source"], t["columns"])
               for d in status["datasets"] for t in d["tables"]}
    assert sources[("oncology", "patients")] == ("parquet data/patients.parquet", 6)
    assert sources[("registry", "staff")] == ("duckdb data/hr.duckdb main.staff", 2)
    assert sources[("registry", "regions")][0] == "csv data/regions.csv"
    assert str(gateway.root) not in json.dumps(status)  # no absolute paths

    assert status["users"] == len(gateway.domain.store.list_users())
    assert status["users"] == before["users"]  # the analyst existed before
    assert status["pending_requests"] == before["pending_requests"] + 1
    assert status["queries"]["total"] == before["queries"]["total"] + 2
    assert status["queries"]["refused"] == before["queries"]["refused"] + 1
    assert status["queries"]["last_24h"] == before["queries"]["last_24h"] + 2
    # The budget request is an admin record; the two queries are query records.
    assert status["audit_records"] == before["audit_records"] + 3
    assert isinstance(status["policy_version"], int) and status["policy_version"] >= 1


# ---------------------------------------------------------------- audit.query and export


@pytest.fixture
def three_queries(gateway, new_user) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A fresh researcher's three queries (the second refused); (user, marker)."""
    name = new_user("researcher")
    marker = f"Mark_{uuid.uuid4().hex[:6]}"
    run_query(gateway.url, name, "SELECT code FROM registry.regions")
    time.sleep(0.01)
    refused_query(gateway.url, name, "SELECT * FROM secret.salaries")
    time.sleep(0.01)
    run_query(gateway.url, name, f"SELECT '{marker}' AS m, label FROM registry.codes")
    return name, marker


def test_audit_query_filters(gateway, owner, three_queries):  # type: ignore[no-untyped-def]
    name, marker = three_queries
    mine = records(owner, user=name)
    assert [r["kind"] for r in mine] == ["query"] * 3
    assert [r["id"] for r in mine] == sorted((r["id"] for r in mine), reverse=True)
    newest, middle, oldest = mine
    assert oldest["sql"] == "SELECT code FROM registry.regions" and oldest["rows"] == 4
    assert middle["error"] and middle["rows"] is None
    assert newest["tables"] == [{"dataset": "registry", "table": "codes", "mode": "raw"}]
    assert set(newest) >= {"id", "time", "kind", "user", "role", "sql", "rewritten_sql",
                           "epsilon", "delta", "rows", "duration_ms", "error", "prev_hash",
                           "hash"}

    ids = lambda rs: [r["id"] for r in rs]  # noqa: E731
    assert ids(records(owner, user=name.upper())) == ids(mine)  # names ignore case
    assert ids(records(owner, user=name, kind="query")) == ids(mine)
    assert records(owner, user=name, kind="login_failure") == []
    assert ids(records(owner, user=name, refused=True)) == [middle["id"]]
    assert ids(records(owner, user=name, refused=False)) == [newest["id"], oldest["id"]]
    assert ids(records(owner, contains=marker)) == [newest["id"]]
    assert ids(records(owner, contains=marker.upper())) == [newest["id"]]
    assert ids(records(owner, contains=f"'{marker}' AS m")) == [newest["id"]]
    assert records(owner, contains=marker + "-nowhere") == []

    # since is inclusive, until exclusive; times as the records show them (UTC, ms).
    assert ids(records(owner, user=name, since=middle["time"])) == ids(mine[:2])
    assert ids(records(owner, user=name, until=newest["time"])) == ids(mine[1:])
    assert ids(records(owner, user=name, since=middle["time"],
                       until=newest["time"])) == [middle["id"]]
    today = datetime.now(UTC).date()
    assert ids(records(owner, user=name, since=today.isoformat(),
                       until=today.isoformat())) == ids(mine)  # a day as until: all of it
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert records(owner, user=name, since=tomorrow) == []
    assert ids(records(owner, user=name, until=f"{tomorrow}T00:00:00+00:00")) == ids(mine)

    # Paging: newest first, next_before_id until there is nothing older.
    page = owner("stockade.audit.query", {"user": name, "limit": 2})
    assert ids(page["records"]) == ids(mine[:2])
    assert page["next_before_id"] == middle["id"]
    page = owner("stockade.audit.query", {"user": name, "limit": 2,
                                          "before_id": page["next_before_id"]})
    assert ids(page["records"]) == [oldest["id"]] and page["next_before_id"] is None
    page = owner("stockade.audit.query", {"user": name, "limit": 3})
    assert len(page["records"]) == 3 and page["next_before_id"] is None
    default = owner("stockade.audit.query", {})
    assert len(default["records"]) == min(100, gateway.domain.audit.count())


def test_audit_export_csv_and_jsonl_match_the_query(gateway, owner, three_queries):  # type: ignore[no-untyped-def]
    name, _ = three_queries
    expected = list(reversed(records(owner, user=name)))  # export is oldest first
    exported = owner("stockade.audit.export", {"user": name})
    assert exported["format"] == "csv" and exported["records"] == 3
    assert exported["next_before_id"] is None
    rows = list(csv.DictReader(io.StringIO(exported["content"])))
    assert list(rows[0]) == ["id", "time", "kind", "user", "sql", "tables", "epsilon", "delta",
                             "rows", "duration_ms", "error", "hash", "details"]
    assert [int(r["id"]) for r in rows] == [r["id"] for r in expected]
    for row, record in zip(rows, expected, strict=True):
        assert row["time"] == record["time"] and row["hash"] == record["hash"]
        assert row["user"] == name and row["kind"] == "query"
        assert row["sql"] == record["sql"]
        assert row["error"] == (record["error"] or "")
        assert row["rows"] == ("" if record["rows"] is None else str(record["rows"]))
        assert row["tables"] == ";".join(f"{t['dataset']}.{t['table']}:{t['mode']}"
                                         for t in record["tables"])
        assert row["details"] == ""
    assert rows[0]["tables"] == "registry.regions:raw" and rows[0]["rows"] == "4"

    lines = owner("stockade.audit.export", {"user": name, "format": "jsonl"})
    assert lines["format"] == "jsonl" and lines["records"] == 3
    assert [json.loads(line) for line in lines["content"].splitlines()] == expected

    newest = owner("stockade.audit.export", {"user": name, "limit": 2, "refused": False})
    assert newest["records"] == 2 and newest["next_before_id"] is None
    two = owner("stockade.audit.export", {"user": name, "limit": 2})
    assert [int(r["id"]) for r in csv.DictReader(io.StringIO(two["content"]))] == [
        r["id"] for r in expected[1:]]
    assert two["next_before_id"] == expected[1]["id"]


def test_admin_records_export_with_their_details(gateway, owner, new_user):  # type: ignore[no-untyped-def]
    name = new_user("analyst")
    exported = owner("stockade.audit.export", {"kind": "admin", "contains": name})
    (row,) = csv.DictReader(io.StringIO(exported["content"]))
    details = json.loads(row["details"])
    assert details["action"] == "stockade.users.create" and details["ok"] is True
    assert details["body"]["password"] == "***" and row["user"] == "owner"
    assert PASSWORD not in exported["content"]


# ---------------------------------------------------------------- verify


def test_verify_on_the_session_gateway(gateway, owner):  # type: ignore[no-untyped-def]
    result = owner("stockade.audit.verify")
    assert result == {"ok": True, "records": gateway.domain.audit.count(),
                      "first_bad_record": None, "problem": None}


def test_verify_names_the_first_bad_record_after_tampering(own_gateway):  # type: ignore[no-untyped-def]
    g = own_gateway
    for role in ("analyst", "researcher", "clinician"):
        g.new_user(role)
    result = g.owner("stockade.audit.verify")
    assert result["ok"] is True and result["records"] == 3
    created = records(g.owner, kind="admin")
    target = created[1]["id"]  # the middle one
    con = sqlite3.connect(g.domain.store.path)
    con.execute("DROP TRIGGER audit_log_append_only_update")
    con.execute("DROP TRIGGER audit_log_append_only_delete")
    con.execute("UPDATE audit_log SET details = replace(details, 'researcher', 'owner')"
                " WHERE id = ?", (target,))
    con.commit()
    con.close()
    result = g.owner("stockade.audit.verify")
    assert result["ok"] is False and result["first_bad_record"] == target
    assert result["records"] == target - 1
    assert "does not match its hash" in result["problem"]

    con = sqlite3.connect(g.domain.store.path)
    con.execute("DELETE FROM audit_log WHERE id = ?", (target - 1,))
    con.commit()
    con.close()
    result = g.owner("stockade.audit.verify")
    assert result["first_bad_record"] == target - 1 and "deleted" in result["problem"]


# ---------------------------------------------------------------- stats


def test_stats_count_queries_and_epsilon(gateway, owner, new_user):  # type: ignore[no-untyped-def]
    analyst = new_user("analyst")
    before = owner("stockade.audit.stats", {"days": 3})
    assert [d["day"] for d in before["queries_per_day"]] == [
        (datetime.now(UTC).date() - timedelta(days=n)).isoformat() for n in (2, 1, 0)]
    run_query(gateway.url, analyst, DP_QUERY)
    run_query(gateway.url, analyst, "/* epsilon: 0.25 */ " + DP_QUERY)
    refused_query(gateway.url, analyst, "SELECT * FROM registry.regions")
    after = owner("stockade.audit.stats", {"days": 3})
    today_before, today_after = before["queries_per_day"][-1], after["queries_per_day"][-1]
    assert today_after["queries"] == today_before["queries"] + 3
    assert today_after["refused"] == today_before["refused"] + 1
    assert after["queries_per_day"][:2] == before["queries_per_day"][:2]
    mine = [e for e in after["epsilon_by_user"] if e["user"] == analyst]
    assert mine == [{"user": analyst, "dataset": "oncology", "epsilon": 0.35, "delta": 0.0,
                     "queries": 2}]
    assert len(owner("stockade.audit.stats")["queries_per_day"]) == 30


# ---------------------------------------------------------------- budgets


def test_budget_list_shows_exact_spend(gateway, owner, new_user):  # type: ignore[no-untyped-def]
    spender, idle, researcher = new_user("analyst"), new_user("analyst"), new_user("researcher")
    run_query(gateway.url, spender, DP_QUERY)
    (entry,) = owner("stockade.budget.list", {"user": spender})
    assert entry == {"user": spender, "dataset": "oncology",
                     "epsilon_allowance": 3.0, "epsilon_spent": 0.1, "epsilon_remaining": 2.9,
                     "delta_allowance": 1e-06, "delta_spent": 0.0, "delta_remaining": 1e-06,
                     "cap_epsilon": None, "cap_delta": None}
    (fresh,) = owner("stockade.budget.list", {"user": idle.upper()})
    assert fresh["user"] == idle and fresh["epsilon_spent"] == 0.0
    assert fresh["epsilon_remaining"] == 3.0
    assert owner("stockade.budget.list", {"user": researcher}) == []  # no dp dataset
    everyone = owner("stockade.budget.list", {"dataset": "oncology"})
    assert {spender, idle} <= {e["user"] for e in everyone}
    assert {e["dataset"] for e in everyone} == {"oncology"}
    assert all(e["user"] != researcher for e in owner("stockade.budget.list"))
    # A budget the owner set on a dataset the role does not read in dp still shows.
    owner("stockade.budget.set", {"user": researcher, "dataset": "registry", "epsilon": 2})
    (kept,) = owner("stockade.budget.list", {"user": researcher})
    assert kept["dataset"] == "registry" and kept["epsilon_allowance"] == 2.0


def test_budget_cap_limits_everyone_and_can_be_removed(own_gateway):  # type: ignore[no-untyped-def]
    g = own_gateway
    first, second = g.new_user("analyst"), g.new_user("analyst")
    run_query(g.url, first, DP_QUERY)
    cap = g.owner("stockade.budget.cap", {"dataset": "oncology", "epsilon": 0.25})
    # No δ given and no cap before: the cap limits ε only (δ cap 1).
    assert cap == {"dataset": "oncology", "cap_epsilon": 0.25, "cap_delta": 1.0,
                   "spent_epsilon": 0.1, "spent_delta": 0.0}
    (entry,) = g.owner("stockade.budget.list", {"user": second})
    assert entry["cap_epsilon"] == 0.25 and entry["epsilon_remaining"] == 0.15
    assert entry["epsilon_allowance"] == 3.0
    run_query(g.url, second, DP_QUERY)
    (entry,) = g.owner("stockade.budget.list", {"user": first})
    assert entry["epsilon_remaining"] == 0.05 and entry["epsilon_spent"] == 0.1
    with pytest.raises(Exception, match="shared by all its users"):  # noqa: B017
        run_query(g.url, second, "SELECT COUNT(*) AS again FROM oncology.screenings")

    cap = g.owner("stockade.budget.cap", {"dataset": "oncology", "epsilon": 1, "delta": 1e-6})
    assert cap["cap_epsilon"] == 1.0 and cap["cap_delta"] == 1e-06
    assert cap["spent_epsilon"] == 0.2
    cap = g.owner("stockade.budget.cap", {"dataset": "oncology", "epsilon": 2})
    assert cap["cap_delta"] == 1e-06  # kept from the current cap
    removed = g.owner("stockade.budget.cap", {"dataset": "oncology", "epsilon": None})
    assert removed == {"dataset": "oncology", "cap_epsilon": None, "cap_delta": None,
                       "spent_epsilon": 0.2, "spent_delta": 0.0}
    (entry,) = g.owner("stockade.budget.list", {"user": second})
    assert entry["cap_epsilon"] is None and entry["epsilon_remaining"] == 2.9
    changes = [r["body"] for r in records(g.owner, kind="admin", contains="budget.cap")]
    assert changes[0] == {"dataset": "oncology", "epsilon": None}

    for body, message in [
        ({"dataset": "oncolgy", "epsilon": 1}, "Did you mean 'oncology'"),
        ({"dataset": "oncology"}, "'epsilon' is required"),
        ({"dataset": "oncology", "epsilon": -1}, "'epsilon' must be ≥ 0"),
        ({"dataset": "oncology", "epsilon": None, "delta": 0.1}, "'delta' needs an 'epsilon'"),
        ({"dataset": "oncology", "epsilonn": 1}, "Did you mean 'epsilon'"),
    ]:
        with pytest.raises(pa.ArrowInvalid, match=message):
            g.owner("stockade.budget.cap", body)
    assert g.domain.ledger.dataset_caps() == {}


# ---------------------------------------------------------------- schemas per role


def test_catalog_roles_shows_each_roles_schema(gateway, owner):  # type: ignore[no-untyped-def]
    entries = owner("stockade.catalog.roles")
    by = {(e["role"], e["dataset"], e["table"]): e for e in entries}
    columns = {key: {c["name"]: c["type"] for c in e["columns"]} for key, e in by.items()}
    assert {role for role, _, _ in by} == {"researcher", "clinician", "analyst", "auditor",
                                          "owner"}
    # Hidden columns are absent; the clinician's role also hides zip.
    assert "patient_id" not in columns[("researcher", "oncology", "patients")]
    assert columns[("researcher", "oncology", "patients")]["zip"] == "string"
    assert "zip" not in columns[("clinician", "oncology", "patients")]
    assert "site" in columns[("clinician", "oncology", "patients")]
    # A mask is typed as its result: staff.id is an integer in the source, text masked.
    assert columns[("researcher", "registry", "staff")] == {"id": "string", "job": "string"}
    # Table-level hiding and masks apply to admins too; the source's own types show
    # where no mask applies.
    assert columns[("owner", "registry", "staff")]["id"] == "string"
    assert "patient_id" not in columns[("owner", "oncology", "patients")]
    assert columns[("owner", "oncology", "patients")]["birth_year"] == "int32"
    assert columns[("owner", "registry", "codes")] == {"code": "int64", "label": "string"}
    assert by[("analyst", "oncology", "screenings")]["mode"] == "dp"
    assert by[("auditor", "oncology", "screenings")]["mode"] == "aggregate"
    assert ("analyst", "registry", "regions") not in by
    assert ("researcher", "secret", "salaries") not in by
    assert by[("owner", "secret", "salaries")]["mode"] == "raw"

    only = owner("stockade.catalog.roles", {"role": "clinician"})
    assert {e["role"] for e in only} == {"clinician"}
    assert [(e["dataset"], e["table"]) for e in only] == [("oncology", "patients"),
                                                          ("oncology", "screenings")]


# ---------------------------------------------------------------- admin actions are audited


def test_state_changing_actions_are_audited_with_secrets_left_out(gateway, owner, new_user):  # type: ignore[no-untyped-def]
    name = f"aa_new_{uuid.uuid4().hex[:8]}"
    secret_password = f"pw-{uuid.uuid4().hex}"
    owner("stockade.users.create", {"name": name, "role": "analyst",
                                    "password": secret_password})
    owner("stockade.users.reset_password", {"name": name, "password": secret_password + "2"})
    with pytest.raises(pa.ArrowInvalid, match="Did you mean 'analyst'"):
        owner("stockade.users.create", {"name": name + "x", "role": "analist",
                                        "password": secret_password})
    me = Client(gateway.url, name, secret_password + "2")
    try:
        filed = me("stockade.request_budget", {"dataset": "oncology", "epsilon": 0.5,
                                               "reason": "a study"})
        with pytest.raises(flight.FlightUnauthorizedError):
            me("stockade.users.update", {"name": name, "role": "owner"})
    finally:
        me.close()
    owner("stockade.requests.deny", {"id": filed["id"], "reason": "not now"})

    mine = records(owner, kind="admin", contains=name)[::-1]
    assert [(r["user"], r["action"], r["ok"]) for r in mine] == [
        ("owner", "stockade.users.create", True),
        ("owner", "stockade.users.reset_password", True),
        ("owner", "stockade.users.create", False),
        (name, "stockade.request_budget", True),
        (name, "stockade.users.update", False),
    ]
    assert mine[0]["body"] == {"name": name, "role": "analyst", "password": "***"}
    assert mine[0]["role"] == "owner" and mine[0]["error"] is None
    assert mine[1]["body"]["password"] == "***"
    assert "Did you mean 'analyst'" in mine[2]["error"]
    assert mine[3]["body"] == {"dataset": "oncology", "epsilon": 0.5, "reason": "a study"}
    assert "Only the data owner" in mine[4]["error"] and mine[4]["role"] == "analyst"
    (decision,) = [r for r in records(owner, kind="admin", user="owner")
                   if r["action"] == "stockade.requests.deny" and r["body"]["id"] == filed["id"]]
    assert decision["ok"] is True and decision["body"]["reason"] == "not now"
    everything = owner("stockade.audit.export", {"kind": "admin", "format": "jsonl"})
    assert secret_password not in everything["content"]


def test_read_only_actions_are_not_audited(gateway, owner, new_user):  # type: ignore[no-untyped-def]
    name = new_user("analyst")
    me = Client(gateway.url, name, PASSWORD)
    before = gateway.domain.audit.count()
    try:
        for action in ("stockade.whoami", "stockade.my_requests", "stockade.budget"):
            me(action)
    finally:
        me.close()
    for action, body in [("stockade.status", {}), ("stockade.users.list", {}),
                         ("stockade.requests.list", {}), ("stockade.audit.query", {}),
                         ("stockade.audit.export", {"limit": 1}), ("stockade.audit.verify", {}),
                         ("stockade.audit.stats", {}), ("stockade.budget.list", {}),
                         ("stockade.catalog.roles", {"role": "auditor"})]:
        owner(action, body)
    with pytest.raises(pa.ArrowInvalid):
        owner("stockade.audit.query", {"kind": "nope"})
    assert gateway.domain.audit.count() == before


def test_every_action_decides_whether_it_is_audited():
    read_only = ("list", "get", "versions", "query", "export", "verify", "stats", "status",
                 "whoami", "my_requests", "dry_run", "validate", "roles", "catalog")
    for name, action in ACTIONS.items():
        assert isinstance(action.audited, bool), name
        assert action.audited == (name.rsplit(".", 1)[-1] not in read_only), name


# ---------------------------------------------------------------- refusals


OWNER_ACTIONS = [
    ("stockade.status", {}),
    ("stockade.audit.query", {"user": "ownr", "kind": "querry"}),
    ("stockade.audit.export", {"format": "cvs", "contains": "salary"}),
    ("stockade.audit.verify", {}),
    ("stockade.audit.stats", {"days": 0}),
    ("stockade.budget.list", {"user": "ownr", "dataset": "oncolgy"}),
    ("stockade.budget.cap", {"dataset": "oncology", "epsilon": 0}),
    ("stockade.catalog.roles", {"role": "clinicia"}),
]


def test_owner_actions_are_refused_to_others_without_leaking(gateway, new_user):  # type: ignore[no-untyped-def]
    name = new_user("researcher")
    me = Client(gateway.url, name, PASSWORD)
    try:
        for action, body in OWNER_ACTIONS:
            with pytest.raises(flight.FlightUnauthorizedError) as refused:
                me(action, body)
            message = str(refused.value)
            assert f"Only the data owner (an admin role) may run {action}" in message
            for leak in ("Did you mean", "owner'", "oncology'", "clinician", "csv"):
                assert leak not in message, (action, message)
    finally:
        me.close()
    assert gateway.domain.ledger.dataset_caps() == {}


@pytest.mark.parametrize(("action", "body", "message"), [
    ("stockade.status", {"verbose": True}, "Unknown field 'verbose'"),
    ("stockade.audit.query", {"kind": "querry"}, "Did you mean 'query'"),
    ("stockade.audit.query", {"limt": 5}, "Did you mean 'limit'"),
    ("stockade.audit.query", {"usr": "ann"}, "Did you mean 'user'"),
    ("stockade.audit.query", {"limit": 0}, "'limit' must be a whole number between 1 and 10000"),
    ("stockade.audit.query", {"limit": 10_001}, "between 1 and 10000"),
    ("stockade.audit.query", {"limit": "5"}, "'limit'"),
    ("stockade.audit.query", {"before_id": 0}, "'before_id'"),
    ("stockade.audit.query", {"refused": "yes"}, "'refused' must be true or false"),
    ("stockade.audit.query", {"since": "yesterday"}, "'since' must be an ISO date or time"),
    ("stockade.audit.query", {"until": 1746144000}, "'until' must be an ISO date or time"),
    ("stockade.audit.query", {"since": "2025-05-03", "until": "2025-05-02"},
     "must be before 'until'"),
    ("stockade.audit.query", {"contains": ""}, "'contains' must be a non-empty string"),
    ("stockade.audit.export", {"format": "cvs"}, "Did you mean 'csv'"),
    ("stockade.audit.export", {"limit": 100_001}, "between 1 and 100000"),
    ("stockade.audit.export", {"fromat": "csv"}, "Did you mean 'format'"),
    ("stockade.audit.verify", {"all": True}, "Unknown field 'all'"),
    ("stockade.audit.stats", {"days": 0}, "'days'"),
    ("stockade.audit.stats", {"dayz": 3}, "Did you mean 'days'"),
    ("stockade.budget.list", {"user": "ownr"}, "Did you mean 'owner'"),
    ("stockade.budget.list", {"dataset": "oncolgy"}, "Did you mean 'oncology'"),
    ("stockade.catalog.roles", {"role": "clinicia"}, "Did you mean 'clinician'"),
])
def test_bad_bodies_are_invalid_arguments(owner, action, body, message):  # type: ignore[no-untyped-def]
    with pytest.raises(pa.ArrowInvalid, match=message):
        owner(action, body)
