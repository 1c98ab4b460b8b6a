"""The owner's policy actions (gateway.admin_policy) through real Flight DoAction calls,
and analysts' ADBC queries that follow a replaced policy without a restart.

Each test starts its own gateway (the session gateway's policy is never changed)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from gateway.errors import InputError, PermissionDeniedError
from gateway.remote import GatewayClient
from tests.conftest import NUMBERS_ROWS, TEST_POLICY

PASSWORDS = {"owner": "owner-password", "rita": "rita-password", "ann": "ann-password",
             "carl": "carl-password"}
ROLES = {"owner": "owner", "rita": "researcher", "ann": "analyst", "carl": "clinician"}
SITES = "SELECT DISTINCT site FROM oncology.screenings ORDER BY site"
ALL_SITES = ["east", "north", "south", "west"]
BULK_RAW = "      bulk: {mode: raw}\n"
BULK_DENY = "      bulk: {mode: deny}\n"
DP_COUNT = "SELECT COUNT(*) AS n FROM oncology.screenings"


class OwnGateway:
    """A gateway of this test's own over the shared test data (read only)."""

    def __init__(self, test_root: Path, folder: Path) -> None:
        self.policy = folder / "conf" / "policy.yaml"
        self.policy.parent.mkdir(parents=True)
        self.policy.write_text(TEST_POLICY.replace("path: data/", f"path: {test_root}/data/"))
        self.data_dir = folder / "state"
        self.server: Any = None
        self.domain: Any = None
        self.url = ""
        self.clients: list[GatewayClient] = []
        self.connections: list[Any] = []

    def start(self) -> None:
        from gateway.serving import start_server
        from gateway.settings import load_settings

        os.environ.pop("STOCKADE_ADMIN_PASSWORD", None)
        settings = load_settings({"policy": str(self.policy), "data_dir": str(self.data_dir),
                                  "port": 0, "memory_limit": "1GB"}, env={})
        self.server, self.domain, self.url, _ = start_server(settings)
        store = self.domain.store
        for name, password in PASSWORDS.items():
            try:
                store.get_user(name)
            except LookupError:
                store.add_user(name, ROLES[name], password,
                               {"site": "north"} if name == "carl" else {})
            else:
                store.set_password(name, password)

    def stop(self) -> None:
        for conn in self.connections:
            conn.close()
        for client in self.clients:
            client.close()
        self.connections, self.clients = [], []
        self.server.shutdown()
        self.domain.close()

    def client(self, user: str = "owner") -> GatewayClient:
        client = GatewayClient(self.url, user, PASSWORDS[user])
        self.clients.append(client)
        return client

    def connect(self, user: str) -> Any:
        conn = flight_sql.connect(self.url, db_kwargs={"username": user,
                                                       "password": PASSWORDS[user]},
                                  autocommit=True)
        self.connections.append(conn)
        return conn


@pytest.fixture
def own(test_root: Path, tmp_path: Path) -> Iterator[OwnGateway]:
    gw = OwnGateway(test_root, tmp_path)
    gw.start()
    yield gw
    gw.stop()


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def site_list(conn: Any) -> list[str]:
    return [r[0] for r in rows(conn, SITES)]


def with_row_filter(text: str, condition: str) -> str:
    old = "      oncology: {mode: raw}\n      registry: {mode: raw}\n"
    new = (f'      oncology: {{mode: raw, row_filter: "{condition}"}}\n'
           "      registry: {mode: raw}\n")
    assert old in text
    return text.replace(old, new)


def live_state(own: OwnGateway) -> tuple[int, str, list[int]]:
    """The live version, the policy file's text and the stored version numbers."""
    owner = own.client()
    versions = [v["version"] for v in owner.action("stockade.policy.versions")]
    return owner.action("stockade.policy.get")["version"], own.policy.read_text(), versions


# ---------------------------------------------------------------- replace, live


def test_replace_changes_an_analysts_next_query_without_restart(own: OwnGateway):
    owner = own.client()
    rita = own.connect("rita")
    assert site_list(rita) == ALL_SITES
    assert rows(rita, "SELECT COUNT(*) FROM bulk.numbers") == [(NUMBERS_ROWS,)]
    live = owner.action("stockade.policy.get")
    assert live["version"] == 1 and live["live"] and live["created_by"] == "file"

    text = with_row_filter(live["yaml"], "site = 'south'").replace(BULK_RAW, BULK_DENY)
    done = owner.action("stockade.policy.replace",
                        {"yaml": text, "comment": "south only, no bulk", "expected_version": 1})
    assert (done["version"], done["previous_version"]) == (2, 1)
    assert "role 'researcher': bulk mode raw → deny" in done["changes"]
    assert "role 'researcher': oncology row filter none → \"site = 'south'\"" in done["changes"]
    assert done["diff"].startswith("--- version 1\n+++ version 2\n")
    assert "-      bulk: {mode: raw}\n+      bulk: {mode: deny}\n" in done["diff"]

    # The same connection, no reconnect: the new policy at once.
    assert site_list(rita) == ["south"]
    with pytest.raises(Exception, match="Table 'bulk.numbers' not found"):
        rows(rita, "SELECT COUNT(*) FROM bulk.numbers")
    catalogs = rita.adbc_get_objects(depth="db_schemas").read_all().to_pylist()  # the catalog
    schemas = {s["db_schema_name"] for c in catalogs for s in c["catalog_db_schemas"]}
    assert "bulk" not in schemas and "oncology" in schemas
    assert own.policy.read_text() == text


def test_a_statement_prepared_under_the_old_policy_runs_under_the_new_one(own: OwnGateway):
    """Security: nothing planned or prepared before a replacement widens access after it."""
    owner = own.client()
    rita = own.connect("rita")
    cur = rita.cursor()
    try:
        cur.adbc_prepare(SITES)
        cur.execute(SITES)
        assert [r[0] for r in cur.fetchall()] == ALL_SITES
        text = with_row_filter(owner.action("stockade.policy.get")["yaml"], "site = 'east'")
        owner.action("stockade.policy.replace", {"yaml": text})
        cur.execute(SITES)  # the same prepared statement, and a plan cached before
        assert [r[0] for r in cur.fetchall()] == ["east"]
    finally:
        cur.close()


def test_a_big_stream_started_before_a_replacement_completes(own: OwnGateway):
    owner = own.client()
    rita = own.connect("rita")
    old_engine = own.domain.engine
    cur = rita.cursor()
    try:
        cur.execute("SELECT id, bucket, half FROM bulk.numbers")
        reader = cur.fetch_record_batch()
        first = reader.read_next_batch()
        text = owner.action("stockade.policy.get")["yaml"].replace(BULK_RAW, BULK_DENY)
        owner.action("stockade.policy.replace", {"yaml": text})
        with pytest.raises(Exception, match="Table 'bulk.numbers' not found"):
            rows(own.connect("rita"), "SELECT COUNT(*) FROM bulk.numbers")
        assert old_engine.retired and not old_engine.closed  # still streaming
        count, total = first.num_rows, pa.compute.sum(first.column("id")).as_py()
        for i, batch in enumerate(reader):
            if i < 20:
                time.sleep(0.02)  # a slow reader
            count += batch.num_rows
            total += pa.compute.sum(batch.column("id")).as_py() or 0
        assert (count, total) == (NUMBERS_ROWS, NUMBERS_ROWS * (NUMBERS_ROWS - 1) // 2)
    finally:
        cur.close()
    deadline = time.monotonic() + 10
    while not old_engine.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert old_engine.closed and not old_engine.work_dir.exists()


# ---------------------------------------------------------------- refused, nothing changes


def test_invalid_replacements_are_refused_and_change_nothing(own: OwnGateway):
    owner = own.client()
    rita = own.connect("rita")
    before = live_state(own)
    text = before[1]
    bad_mask = text.replace("left(zip, 3)", "left(zipp, 3)")
    mask_line = bad_mask[:bad_mask.index("zipp")].count("\n") + 1
    cases: list[tuple[dict[str, Any], str]] = [
        ({"yaml": "version: 1\ndomain: [unclosed\n"}, "line 3: Not valid YAML"),
        ({"yaml": bad_mask},
         rf"line {mask_line}: datasets\.oncology\.tables\.patients\.columns\.zip\.mask: "
         r"Unknown column 'zipp'\. Did you mean 'zip'\?"),
        ({"yaml": text.replace("mode: raw}", "mode: rwa}", 1)},
         r"Unknown mode 'rwa'\. Did you mean 'raw'\?"),
        ({"yaml": with_row_filter(text, "site = 'south'"), "expected_version": 3},
         r"the live policy is version 1, not 3; reload and retry"),
        ({"yaml": text, "expected_version": "1"}, "Field 'expected_version' must be a positive"),
        ({"yaml": text, "comentary": "x"}, "Unknown field 'comentary'. Did you mean 'comment'?"),
        ({}, "Field 'yaml' is required"),
    ]
    for body, message in cases:
        with pytest.raises(InputError, match=message):
            owner.action("stockade.policy.replace", body)
    # The status on the wire is INVALID_ARGUMENT.
    raw = flight.FlightClient(own.url)
    try:
        options = flight.FlightCallOptions(
            headers=[raw.authenticate_basic_token("owner", PASSWORDS["owner"])])
        with pytest.raises(pa.ArrowInvalid, match="Not valid YAML"):
            list(raw.do_action(flight.Action("stockade.policy.replace",
                                             b'{"yaml": "domain: [x"}'), options))
    finally:
        raw.close()
    assert live_state(own) == before
    assert site_list(rita) == ALL_SITES


def test_only_owners_may_see_or_change_the_policy(own: OwnGateway):
    rita = own.client("rita")
    text = own.policy.read_text()
    for name, body in (("stockade.policy.get", {}), ("stockade.policy.versions", {}),
                       ("stockade.policy.validate", {"yaml": text}),
                       ("stockade.policy.replace", {"yaml": text.replace(BULK_RAW, BULK_DENY)}),
                       ("stockade.policy.dry_run", {"query": DP_COUNT, "user": "ann"})):
        with pytest.raises(PermissionDeniedError, match=f"Only the data owner .* may run {name}"):
            rita.action(name, body)
    assert own.policy.read_text() == text and own.domain.policy_version == 1


# ---------------------------------------------------------------- versions, restarts


def test_versions_keep_every_policy_and_a_restart_loads_the_live_one(own: OwnGateway):
    owner = own.client()
    first = owner.action("stockade.policy.get")
    second_text = with_row_filter(first["yaml"], "site = 'west'")
    owner.action("stockade.policy.replace", {"yaml": second_text, "comment": "west"})
    versions = owner.action("stockade.policy.versions")
    assert [(v["version"], v["created_by"], v["comment"], v["live"]) for v in versions] == [
        (2, "owner", "west", True), (1, "file", None, False)]
    assert set(versions[0]) == {"version", "sha256", "created_at", "created_by", "comment",
                                "live"}
    previous = owner.action("stockade.policy.get", {"version": 1})
    assert previous["yaml"] == first["yaml"] and previous["live"] is False
    assert previous["sha256"] == first["sha256"]
    with pytest.raises(InputError, match="no policy version 5; versions are 1 to 2"):
        owner.action("stockade.policy.get", {"version": 5})

    own.stop()
    own.start()  # the replaced policy, from the file, and no new version
    owner = own.client()
    assert [v["version"] for v in owner.action("stockade.policy.versions")] == [2, 1]
    assert owner.action("stockade.policy.get")["yaml"] == second_text
    assert site_list(own.connect("rita")) == ["west"]

    own.stop()
    edited = second_text.replace("site = 'west'", "site = 'north'")
    own.policy.write_text(edited)
    own.start()  # an edited file is a new version made by "file"
    owner = own.client()
    newest = owner.action("stockade.policy.get")
    assert (newest["version"], newest["created_by"], newest["yaml"]) == (3, "file", edited)
    assert site_list(own.connect("rita")) == ["north"]


# ---------------------------------------------------------------- validate


def test_validate_reports_changes_and_errors_and_touches_nothing(own: OwnGateway):
    owner = own.client()
    before = live_state(own)
    text = before[1]
    same = owner.action("stockade.policy.validate", {"yaml": text})
    assert same == {"ok": True, "errors": [], "warnings": [], "diff": "", "changes": []}

    candidate = (text.replace(BULK_RAW, BULK_DENY)
                 .replace("oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3.0,",
                          "oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 5.0,")
                 .replace("  owner: {admin: true}\n",
                          "  owner: {admin: true}\n  guest: {datasets: {registry: {mode: raw}}}\n"))
    result = owner.action("stockade.policy.validate", {"yaml": candidate})
    assert result["ok"] and result["errors"] == []
    assert result["changes"] == [
        "role 'guest' added (registry: raw)",
        "role 'analyst': oncology budget ε 3, δ 1e-06 → ε 5, δ 1e-06",
        "role 'researcher': bulk mode raw → deny",
    ]
    assert "+  guest: {datasets: {registry: {mode: raw}}}" in result["diff"]

    bad = text.replace("row_filter: \"consent\"", "row_filter: \"consent + 1\"")
    line = bad[:bad.index("consent + 1")].count("\n") + 1
    result = owner.action("stockade.policy.validate", {"yaml": bad})
    assert not result["ok"]
    (error,) = result["errors"]
    assert error["line"] == line
    assert error["path"] == "datasets.oncology.tables.patients.row_filter"
    assert error["message"].startswith(
        "The row filter 'consent + 1' of table 'oncology.patients', read by roles")
    assert "does not type-check on DuckDB" in error["message"]

    yaml_error = owner.action("stockade.policy.validate", {"yaml": "version: 1\ndomain: [\n"})
    assert not yaml_error["ok"] and yaml_error["errors"][0]["line"] == 3
    assert yaml_error["changes"] == [] and yaml_error["diff"]

    warned = owner.action("stockade.policy.validate",
                          {"yaml": text.replace("  clinician:\n", "  clinicians:\n")})
    assert warned["ok"]
    assert ["user 'carl' has role 'clinician', which this policy does not define: they cannot "
            "log in"] == warned["warnings"]
    assert live_state(own) == before
    engines = own.data_dir / "engines"
    assert not engines.exists() or not any(engines.iterdir())


# ---------------------------------------------------------------- dry run


def test_dry_run_shows_the_decision_and_cost_and_charges_nothing(own: OwnGateway):
    owner = own.client()
    ann = own.client("ann")
    budget_before = ann.action("stockade.budget")
    charges_before = own.domain.ledger.charges("ann")

    dp = owner.action("stockade.policy.dry_run", {"query": DP_COUNT, "user": "ann"})
    assert dp["decision"] == "allowed" and dp["error"] is None
    assert (dp["user"], dp["role"]) == ("ann", "analyst")
    assert dp["tables"] == [{"dataset": "oncology", "table": "screenings", "mode": "dp"}]
    assert dp["epsilon"] == pytest.approx(0.1) and dp["delta"] == 0.0
    assert dp["remaining_epsilon"] == pytest.approx(3.0)
    assert "COUNT" in dp["rewritten_sql"].upper()

    chosen = owner.action("stockade.policy.dry_run",
                          {"query": DP_COUNT, "user": "ann", "epsilon": 0.25})
    assert chosen["epsilon"] == pytest.approx(0.25)

    refused = owner.action("stockade.policy.dry_run",
                           {"query": "SELECT * FROM oncology.screenings", "user": "ann"})
    assert refused["decision"] == "refused" and refused["rewritten_sql"] is None
    assert refused["error"] and "aggregate" in refused["error"].lower()

    raw = owner.action("stockade.policy.dry_run", {"query": SITES, "user": "carl"})
    assert raw["decision"] == "allowed" and raw["epsilon"] is None
    assert raw["tables"] == [{"dataset": "oncology", "table": "screenings", "mode": "raw"}]
    assert "'north'" in raw["rewritten_sql"]

    # Under a candidate policy: ann reads oncology raw; the live policy is untouched.
    text = own.policy.read_text().replace(
        "      oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3.0, delta: 1.0e-6}}",
        "      oncology: {mode: raw}")
    as_raw = owner.action("stockade.policy.dry_run",
                          {"query": "SELECT site FROM oncology.screenings", "user": "ann",
                           "yaml": text})
    assert as_raw["decision"] == "allowed" and as_raw["tables"][0]["mode"] == "raw"
    assert as_raw["epsilon"] is None and "LIMIT" in as_raw["rewritten_sql"].upper()
    with pytest.raises(InputError, match="The candidate policy is not valid: line 3"):
        owner.action("stockade.policy.dry_run",
                     {"query": DP_COUNT, "user": "ann", "yaml": "version: 1\ndomain: [\n"})
    with pytest.raises(InputError, match="unknown user 'anne'. Did you mean 'ann'"):
        owner.action("stockade.policy.dry_run", {"query": DP_COUNT, "user": "anne"})

    assert ann.action("stockade.budget") == budget_before
    assert own.domain.ledger.charges("ann") == charges_before == []
    assert own.domain.policy_version == 1


def test_dry_run_of_an_unaffordable_dp_query_is_refused(own: OwnGateway):
    owner = own.client()
    owner.action("stockade.budget.set", {"user": "ann", "dataset": "oncology", "epsilon": 0.05})
    result = owner.action("stockade.policy.dry_run", {"query": DP_COUNT, "user": "ann"})
    assert result["decision"] == "refused"
    assert result["error"].startswith("Budget for dataset 'oncology' exhausted")
    assert result["epsilon"] == pytest.approx(0.1)


# ---------------------------------------------------------------- concurrency


def test_queries_during_replacements_each_see_one_whole_policy(own: OwnGateway):
    owner = own.client()
    text = own.policy.read_text()
    south = with_row_filter(text, "site = 'south'")
    seen: list[list[str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def analyst(run: Callable[[], list[str]]) -> None:
        while not stop.is_set():
            try:
                seen.append(run())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    conns = [own.connect("rita") for _ in range(3)]
    threads = [threading.Thread(target=analyst, args=(lambda c=c: site_list(c),))
               for c in conns]
    for t in threads:
        t.start()
    try:
        for i in range(4):
            owner.action("stockade.policy.replace", {"yaml": south if i % 2 == 0 else text})
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert seen and all(s in (["south"], ALL_SITES) for s in seen)
    assert own.domain.policy_version == 5
