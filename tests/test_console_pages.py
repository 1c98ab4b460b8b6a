"""The owner's console (ui/), page by page, with Streamlit's AppTest against a real gateway.

Each test drives the console as the owner would (widgets, buttons) and checks
what the gateway now holds through a separate GatewayClient. Tests that change
the policy use a gateway of their own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from gateway.errors import AuthenticationError
from gateway.remote import GatewayClient
from tests.conftest import USERS
from ui.session import CLIENT_KEY, WHOAMI_KEY

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
TIMEOUT = 30
PASSWORD = "console-test-password"


def console(client: GatewayClient, page: str | None = None) -> AppTest:
    """The console, logged in with ``client``, on ``page`` (a file of ui/)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[CLIENT_KEY] = client
    at.session_state[WHOAMI_KEY] = client.action("stockade.whoami")
    at.run()
    if page is not None:
        at.switch_page(page).run()
    no_exception(at)
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def texts(at: AppTest) -> str:
    """Everything the page says in markdown, captions, alerts and headings."""
    no_exception(at)
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "success", "info",
                 "warning", "error"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


def errors(at: AppTest) -> list[str]:
    no_exception(at)
    return [str(e.value) for e in at.error]


def table(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first table on the page that has all ``columns``."""
    no_exception(at)
    for element in at.dataframe:
        value = element.value
        if set(columns) <= set(value.columns):
            return value
    raise AssertionError(f"no table with columns {columns} on the page")


@pytest.fixture
def owner(gateway) -> Iterator[GatewayClient]:  # type: ignore[no-untyped-def]
    client = GatewayClient(gateway.url, "owner", USERS["owner"][1])
    yield client
    client.close()


@pytest.fixture
def analyst(gateway, owner) -> Iterator[tuple[str, GatewayClient]]:  # type: ignore[no-untyped-def]
    """A fresh analyst (dp on oncology), created through the API."""
    name = f"cn_{uuid.uuid4().hex[:8]}"
    owner.action("stockade.users.create", {"name": name, "role": "analyst",
                                           "password": PASSWORD})
    client = GatewayClient(gateway.url, name, PASSWORD)
    yield name, client
    client.close()


def _user(owner: GatewayClient, name: str) -> dict[str, Any] | None:
    return next((u for u in owner.action("stockade.users.list") if u["name"] == name), None)


# ---------------------------------------------------------------- login


def test_login_form_logs_an_owner_in_and_out(gateway, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STOCKADE_GATEWAY", gateway.url)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert "Stockade console" in texts(at)
    url = at.text_input(key="login_url")
    assert url.value == gateway.url and url.disabled  # set where the console was started
    at.text_input(key="login_user").set_value("owner")
    at.text_input(key="login_password").set_value("wrong-password")
    at.button(key="login_submit").click().run()
    assert errors(at) == ["Wrong user name or password."]
    assert CLIENT_KEY not in at.session_state

    at.text_input(key="login_password").set_value(USERS["owner"][1])
    at.button(key="login_submit").click().run()
    assert not at.exception and not errors(at)
    assert CLIENT_KEY in at.session_state
    assert "st_marys" in texts(at)  # the overview names the domain
    at.button(key="logout").click().run()
    assert CLIENT_KEY not in at.session_state
    assert at.text_input(key="login_user") is not None


def test_login_refuses_an_analyst_with_a_clear_message(  # type: ignore[no-untyped-def]
        gateway, monkeypatch):
    monkeypatch.setenv("STOCKADE_GATEWAY", gateway.url)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.text_input(key="login_user").set_value("ann")
    at.text_input(key="login_password").set_value(USERS["ann"][1])
    at.button(key="login_submit").click().run()
    [message] = errors(at)
    assert message.startswith("This console is for data owners: 'ann' has the role 'analyst'")
    assert CLIENT_KEY not in at.session_state


def test_login_to_a_gateway_that_is_down(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STOCKADE_GATEWAY", "grpc://127.0.0.1:9")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.text_input(key="login_user").set_value("owner")
    at.text_input(key="login_password").set_value("whatever-password")
    at.button(key="login_submit").click().run()
    [message] = errors(at)
    assert message.startswith("Cannot reach the gateway at grpc://127.0.0.1:9")


# ---------------------------------------------------------------- users & budgets


def test_create_user_appears_in_the_list(gateway, owner):  # type: ignore[no-untyped-def]
    name = f"cu_{uuid.uuid4().hex[:8]}"
    at = console(owner, "page_users.py")
    at.text_input(key="create_name").set_value(name)
    at.selectbox(key="create_role").select("clinician")
    at.text_input(key="create_password").set_value(PASSWORD)
    at.text_area(key="create_attributes").set_value('{"site": "south"}')
    at.button(key="create_submit").click().run()
    assert not errors(at), errors(at)
    assert f"User '{name}' created with the role 'clinician'." in texts(at)
    users = table(at, "name", "role", "attributes")
    row = users[users["name"] == name].iloc[0]
    assert row["role"] == "clinician" and '"site": "south"' in row["attributes"]
    created = _user(owner, name)
    assert created is not None and created["attributes"] == {"site": "south"}
    with GatewayClient(gateway.url, name, PASSWORD) as new:
        assert new.action("stockade.whoami")["role"] == "clinician"


@pytest.mark.parametrize(("attributes", "message"), [
    ('{"site": north}', "Attributes are not valid JSON (Expecting value at line 1, column 10)"),
    ('["north"]', "Attributes must be a JSON object"),
])
def test_bad_attributes_show_an_error_and_create_nothing(  # type: ignore[no-untyped-def]
        gateway, owner, attributes, message):
    name = f"cb_{uuid.uuid4().hex[:8]}"
    at = console(owner, "page_users.py")
    at.text_input(key="create_name").set_value(name)
    at.selectbox(key="create_role").select("analyst")
    at.text_input(key="create_password").set_value(PASSWORD)
    at.text_area(key="create_attributes").set_value(attributes)
    at.button(key="create_submit").click().run()
    [error] = errors(at)
    assert error.startswith(message)
    assert _user(owner, name) is None


def test_gateway_refusal_is_shown_and_changes_nothing(gateway, owner):  # type: ignore[no-untyped-def]
    name = f"cs_{uuid.uuid4().hex[:8]}"
    at = console(owner, "page_users.py")
    at.text_input(key="create_name").set_value(name)
    at.selectbox(key="create_role").select("analyst")
    at.text_input(key="create_password").set_value("short")
    at.button(key="create_submit").click().run()
    [error] = errors(at)
    assert "password" in error.lower() and "8" in error
    assert _user(owner, name) is None


def test_edit_role_attributes_disable_and_reset(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    at = console(owner, "page_users.py")
    at.selectbox(key="edit_user").select(name).run()
    at.selectbox(key=f"edit_role_{name}").select("clinician")
    at.text_area(key=f"edit_attributes_{name}").set_value('{"site": "east"}')
    at.button(key="edit_submit").click().run()
    assert not errors(at), errors(at)
    user = _user(owner, name)
    assert user is not None
    assert user["role"] == "clinician" and user["attributes"] == {"site": "east"}

    at.text_area(key=f"edit_attributes_{name}").set_value("{site: east}")
    at.button(key="edit_submit").click().run()
    assert errors(at)[0].startswith("Attributes are not valid JSON")
    assert _user(owner, name)["attributes"] == {"site": "east"}  # type: ignore[index]

    at.button(key="toggle_disabled").click().run()
    assert f"User '{name}' disabled." in texts(at)
    assert _user(owner, name)["disabled"] is True  # type: ignore[index]
    at.button(key="toggle_disabled").click().run()
    assert _user(owner, name)["disabled"] is False  # type: ignore[index]

    at.text_input(key="reset_password").set_value("a-new-password-1")
    at.text_input(key="reset_password_again").set_value("a-new-password-2")
    at.button(key="reset_submit").click().run()
    assert errors(at) == ["The two passwords differ; type the same one twice."]
    at.text_input(key="reset_password").set_value("a-new-password-1")
    at.text_input(key="reset_password_again").set_value("a-new-password-1")
    at.button(key="reset_submit").click().run()
    assert not errors(at), errors(at)
    with GatewayClient(gateway.url, name, "a-new-password-1") as again:
        assert again.action("stockade.whoami")["user"] == name


def test_budget_add_and_set(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    at = console(owner, "page_users.py")
    at.selectbox(key="budget_user").select(name)
    at.selectbox(key="budget_dataset").select("oncology")
    at.number_input(key="budget_epsilon").set_value(1.5)
    at.button(key="budget_submit").click().run()
    assert not errors(at), errors(at)
    [budget] = [b for b in me.action("stockade.budget") if b["dataset"] == "oncology"]
    assert budget["epsilon_allowance"] == pytest.approx(4.5)
    assert any(name in str(p.proto.text) and "4.5" in str(p.proto.text) for p in at.get("progress"))

    at.radio(key="budget_how").set_value("Set the total allowance")
    at.number_input(key="budget_epsilon").set_value(2.0)
    at.button(key="budget_submit").click().run()
    [budget] = [b for b in me.action("stockade.budget") if b["dataset"] == "oncology"]
    assert budget["epsilon_allowance"] == pytest.approx(2.0)

    at.number_input(key="budget_epsilon").set_value(None)
    at.button(key="budget_submit").click().run()
    assert errors(at) == ["Give an amount of ε."]


# ---------------------------------------------------------------- requests


def test_approve_a_budget_request(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    filed = me.action("stockade.request_budget",
                      {"dataset": "oncology", "epsilon": 1.25, "reason": "Quarterly report"})
    rid = filed["id"]
    at = console(owner, "page_requests.py")
    assert f"#{rid} · {name}" in texts(at) and "Quarterly report" in texts(at)
    at.number_input(key=f"grant_{rid}").set_value(0.75)
    at.text_input(key=f"reason_{rid}").set_value("Start with less")
    at.button(key=f"approve_{rid}").click().run()
    assert not errors(at), errors(at)
    assert f"Request #{rid} of '{name}' approved." in texts(at)
    [mine] = me.action("stockade.my_requests")
    assert mine["status"] == "approved" and mine["epsilon"] == pytest.approx(0.75)
    assert mine["decision_reason"] == "Start with less"
    [budget] = [b for b in me.action("stockade.budget") if b["dataset"] == "oncology"]
    assert budget["epsilon_allowance"] == pytest.approx(3.75)
    decided = table(at, "id", "status", "decided_by")
    assert decided[decided["id"] == rid].iloc[0]["status"] == "approved"
    assert not [b for b in at.button if b.key == f"approve_{rid}"]  # no longer pending


def test_deny_needs_a_reason(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    rid = me.action("stockade.request_access", {"dataset": "registry", "mode": "aggregate",
                                                "reason": "Bed counts"})["id"]
    at = console(owner, "page_requests.py")
    at.button(key=f"deny_{rid}").click().run()
    assert errors(at) == ["Give a reason to deny a request; the analyst will see it."]
    assert me.action("stockade.my_requests")[0]["status"] == "pending"
    at.text_input(key=f"reason_{rid}").set_value("Not for this project")
    at.button(key=f"deny_{rid}").click().run()
    [mine] = me.action("stockade.my_requests")
    assert mine["status"] == "denied" and mine["decision_reason"] == "Not for this project"


def test_a_request_for_no_dataset_is_marked_for_the_owner(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    # The analyst cannot tell a denied dataset from a missing one; the owner can.
    name, me = analyst
    missing = me.action("stockade.request_access", {"dataset": "vaults", "mode": "raw",
                                                    "reason": "Heard of it"})["id"]
    denied = me.action("stockade.request_access", {"dataset": "secret", "mode": "raw",
                                                   "reason": "Heard of it too"})["id"]
    at = console(owner, "page_requests.py")
    warnings = [w.value for w in at.warning]
    assert "'vaults' is not a dataset of the policy." in warnings
    assert "'secret' is not a dataset of the policy." not in warnings
    assert f"#{missing} · {name}" in texts(at) and f"#{denied} · {name}" in texts(at)


def test_approving_zero_epsilon_is_refused(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    rid = me.action("stockade.request_budget",
                    {"dataset": "oncology", "epsilon": 1.0, "reason": "More"})["id"]
    at = console(owner, "page_requests.py")
    at.number_input(key=f"grant_{rid}").set_value(0.0)
    at.button(key=f"approve_{rid}").click().run()
    [error] = errors(at)
    assert "epsilon" in error and "> 0" in error
    [mine] = me.action("stockade.my_requests")
    assert mine["status"] == "pending"


# ---------------------------------------------------------------- overview & datasets


def test_overview_shows_status_and_charts(gateway, owner, connect):  # type: ignore[no-untyped-def]
    cur = connect("ann").cursor()
    cur.execute("SELECT COUNT(*) AS n FROM oncology.screenings")
    cur.fetch_arrow_table()
    cur.close()
    status = owner.action("stockade.status")
    at = console(owner)
    assert at.title[0].value == "st_marys"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Policy version"] == str(status["policy_version"])
    assert int(metrics["Queries"]) >= 1 and int(metrics["Users"]) >= len(USERS)
    datasets = table(at, "dataset", "tables", "rows")
    assert list(datasets["dataset"]) == ["bulk", "oncology", "registry", "secret"]
    oncology = datasets[datasets["dataset"] == "oncology"].iloc[0]
    assert oncology["tables"] == "patients, screenings" and oncology["rows"] > 0
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2  # queries per day; ε spent per user and dataset
    spent = table(at, "user", "dataset", "epsilon", "queries")
    ann = spent[(spent["user"] == "ann") & (spent["dataset"] == "oncology")].iloc[0]
    assert ann["epsilon"] >= 0.1 and ann["queries"] >= 1


def test_datasets_show_each_roles_schema(gateway, owner):  # type: ignore[no-untyped-def]
    at = console(owner, "page_datasets.py")
    said = texts(at)
    assert "Source: `parquet data/patients.parquet`" in said
    assert "Source: `duckdb data/hr.duckdb main.staff`" in said
    patients = table(at, "column", "clinician (raw)", "analyst (dp)")
    by_column = patients.set_index("column")
    # zip is hidden from clinicians only; patient_id from everyone but the owner.
    assert by_column.loc["zip", "clinician (raw)"] == "—"
    assert by_column.loc["zip", "researcher (raw)"] == "string"
    assert "patient_id" not in by_column.index or (
        by_column.loc["patient_id", "researcher (raw)"] == "—")
    assert any(e.label.startswith("**oncology.screenings** · 20,000 rows")
               for e in at.expander)


# ---------------------------------------------------------------- audit


def test_audit_filters_narrow_the_rows(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    marker = uuid.uuid4().hex[:8]
    with gateway.connect(name, PASSWORD) as conn:
        cur = conn.cursor()
        for sql in (f"SELECT COUNT(*) AS n_{marker} FROM oncology.screenings",
                    f"SELECT nope_{marker} FROM oncology.screenings"):
            try:
                cur.execute(sql)
                cur.fetch_arrow_table()
            except Exception:  # noqa: BLE001 - the second one is refused
                pass
        cur.close()
    at = console(owner, "page_audit.py")
    assert at.success[0].value.startswith("Audit chain intact:")
    everything = table(at, "id", "kind", "user", "outcome", "what")
    total = owner.action("stockade.audit.verify")["records"]
    assert len(everything) == min(total, 100)  # the newest page, 100 a page by default
    assert {"query", "admin"} <= set(everything["kind"])  # admin: creating the analyst

    at.text_input(key="audit_user").set_value(name)
    at.selectbox(key="audit_kind").select("query")
    at.button(key="audit_apply").click().run()
    mine = table(at, "id", "kind", "user", "outcome", "what")
    assert list(mine["user"]) == [name, name] and set(mine["kind"]) == {"query"}
    assert list(mine["outcome"]) == ["refused", "ok"]  # newest first

    at.selectbox(key="audit_refused").select("refused only")
    at.button(key="audit_apply").click().run()
    refused = table(at, "id", "kind", "user", "outcome", "what")
    assert len(refused) == 1 and f"nope_{marker}" in refused.iloc[0]["what"]

    at.selectbox(key="audit_refused").select("(any)")
    at.text_input(key="audit_contains").set_value(f"n_{marker}")
    at.button(key="audit_apply").click().run()
    found = table(at, "id", "kind", "user", "outcome", "what")
    assert len(found) == 1 and found.iloc[0]["outcome"] == "ok"

    at.button(key="audit_export_prepare").click().run()
    assert "1 record(s) in the export." in texts(at)
    [download] = at.download_button
    assert download.label == "Download CSV"


def test_audit_paging_and_bad_dates(gateway, owner):  # type: ignore[no-untyped-def]
    while owner.action("stockade.audit.verify")["records"] < 25:  # two pages and more
        with pytest.raises(AuthenticationError):
            GatewayClient(gateway.url, "nobody", "not-a-password")
    at = console(owner, "page_audit.py")
    at.selectbox(key="audit_limit").select(10)
    at.button(key="audit_apply").click().run()
    first = table(at, "id", "kind")
    assert len(first) == 10
    at.button(key="audit_older").click().run()
    second = table(at, "id", "kind")
    assert second["id"].max() < first["id"].min()
    at.button(key="audit_newer").click().run()
    assert list(table(at, "id", "kind")["id"]) == list(first["id"])

    import datetime as dt

    at.date_input(key="audit_since").set_value(dt.date(2030, 1, 2))
    at.date_input(key="audit_until").set_value(dt.date(2030, 1, 1))
    at.button(key="audit_apply").click().run()
    assert errors(at) == ["'Since' (2030-01-02) is after 'Until' (2030-01-01); swap them."]
    assert list(table(at, "id", "kind")["id"]) == list(first["id"])  # filters unchanged


# ---------------------------------------------------------------- policy (own gateway)


@pytest.fixture(scope="module")
def own_gateway(test_root: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[str]:
    """A gateway of this module's own (its policy changes), over the session's data."""
    from gateway.serving import start_server
    from gateway.settings import load_settings
    from tests.conftest import TEST_POLICY

    root = tmp_path_factory.mktemp("console-policy")
    (root / "data").symlink_to(test_root / "data")
    (root / "policy.yaml").write_text(TEST_POLICY)
    settings = load_settings({"policy": str(root / "policy.yaml"),
                              "data_dir": str(root / "state"), "port": 0,
                              "memory_limit": "1GB"}, env={})
    server, domain, url, _ = start_server(settings)
    for name in ("owner", "ann", "rita"):
        role, password, attributes = USERS[name]
        try:
            domain.store.get_user(name)
            domain.store.set_password(name, password)
        except LookupError:
            domain.store.add_user(name, role, password, attributes)
    yield url
    server.shutdown()
    domain.close()


@pytest.fixture
def policy_owner(own_gateway: str) -> Iterator[GatewayClient]:
    client = GatewayClient(own_gateway, "owner", USERS["owner"][1])
    yield client
    client.close()


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_policy_validate_shows_line_numbers_and_changes_nothing(  # type: ignore[no-untyped-def]
        policy_owner):
    live = policy_owner.action("stockade.policy.get")
    at = console(policy_owner, "page_policy.py")
    assert at.text_area(key="policy_editor").value == live["yaml"]
    broken = live["yaml"].replace("oncology: {mode: dp,", "oncology: {mode: dpp,")
    at.text_area(key="policy_editor").set_value(broken)
    at.button(key="policy_validate").click().run()
    [error] = errors(at)
    assert error.startswith("The policy has errors:")
    assert f"line {_line_of(broken, 'mode: dpp')}" in error and "dpp" in error

    at.button(key="policy_apply").click().run()
    assert errors(at)[0].startswith("The policy has errors:")
    assert not [b for b in at.button if b.key == "policy_confirm"]
    assert policy_owner.action("stockade.policy.get")["version"] == live["version"]

    not_yaml = live["yaml"] + "\n  - : [unclosed\n"
    at.text_area(key="policy_editor").set_value(not_yaml)
    at.button(key="policy_validate").click().run()
    [error] = errors(at)
    assert re.search(r"line \d+", error), error


def test_policy_diff_apply_and_versions(policy_owner, own_gateway):  # type: ignore[no-untyped-def]
    live = policy_owner.action("stockade.policy.get")
    changed = live["yaml"].replace("epsilon_per_query: 0.1", "epsilon_per_query: 0.2")
    assert changed != live["yaml"]
    at = console(policy_owner, "page_policy.py")
    at.text_area(key="policy_editor").set_value(changed)
    at.button(key="policy_validate").click().run()
    assert not errors(at), errors(at)
    assert "The policy is valid." in texts(at)
    [diff] = [c.value for c in at.code if c.language == "diff"]
    assert "-      oncology: {mode: dp, epsilon_per_query: 0.1" in diff
    assert "+      oncology: {mode: dp, epsilon_per_query: 0.2" in diff
    assert "Changes against the live version" in texts(at)

    # Apply asks for confirmation first; nothing changes until it is given.
    at.button(key="policy_apply").click().run()
    assert policy_owner.action("stockade.policy.get")["version"] == live["version"]
    at.text_input(key="policy_comment").set_value("Dearer dp queries")
    at.button(key="policy_confirm").click().run()
    assert not errors(at), errors(at)
    now = policy_owner.action("stockade.policy.get")
    assert now["version"] == live["version"] + 1 and now["yaml"] == changed
    assert now["comment"] == "Dearer dp queries" and now["created_by"] == "owner"
    assert f"Policy version {now['version']} applied" in texts(at)
    assert at.text_area(key="policy_editor").value == changed
    versions = table(at, "version", "live", "created_by", "comment")
    assert list(versions["version"])[:2] == [now["version"], live["version"]]
    with GatewayClient(own_gateway, "ann", USERS["ann"][1]) as ann:
        cost = ann.action("stockade.cost", {"query": "SELECT COUNT(*) FROM oncology.screenings"})
    assert cost["epsilon"] == pytest.approx(0.2)

    # Roll back: load the older version, apply it.
    at.selectbox(key="policy_version_pick").select(live["version"])
    at.button(key="policy_load_version").click().run()
    assert at.text_area(key="policy_editor").value == live["yaml"]
    at.button(key="policy_apply").click().run()
    at.button(key="policy_confirm").click().run()
    back = policy_owner.action("stockade.policy.get")
    assert back["version"] == now["version"] + 1 and back["yaml"] == live["yaml"]


def test_policy_apply_refused_when_someone_else_changed_it(policy_owner):  # type: ignore[no-untyped-def]
    live = policy_owner.action("stockade.policy.get")
    at = console(policy_owner, "page_policy.py")
    mine = live["yaml"].replace("Cancer screening results", "Cancer screenings")
    at.text_area(key="policy_editor").set_value(mine)
    at.button(key="policy_apply").click().run()
    theirs = live["yaml"].replace("Regional registry extracts", "Registry extracts")
    policy_owner.action("stockade.policy.replace", {"yaml": theirs,
                                                   "expected_version": live["version"]})
    at.button(key="policy_confirm").click().run()
    [error] = errors(at)
    assert (f"the live policy is version {live['version'] + 1}, not {live['version']}; "
            "reload and retry") in error
    assert policy_owner.action("stockade.policy.get")["yaml"] == theirs
    at.button(key="policy_reload_button").click().run()
    assert at.text_area(key="policy_editor").value == theirs


def test_policy_dry_run_as_a_user(policy_owner):  # type: ignore[no-untyped-def]
    live = policy_owner.action("stockade.policy.get")
    at = console(policy_owner, "page_policy.py")
    at.selectbox(key="dry_user").select("ann")
    at.text_area(key="dry_query").set_value("SELECT COUNT(*) AS n FROM oncology.screenings")
    at.button(key="dry_submit").click().run()
    assert not errors(at), errors(at)
    assert "Allowed for ann (analyst)." in texts(at)
    epsilon = re.search(r"\*\*Cost:\*\* ε ([0-9.]+)", texts(at))
    assert epsilon is not None and float(epsilon.group(1)) == pytest.approx(
        0.2 if "epsilon_per_query: 0.2" in live["yaml"] else 0.1)
    assert any(c.language == "sql" and "COUNT" in c.value.upper() for c in at.code)

    # Under a candidate policy in the editor, without applying it.
    at.text_area(key="policy_editor").set_value(
        live["yaml"].replace("epsilon_per_query: 0.1", "epsilon_per_query: 0.3")
        .replace("epsilon_per_query: 0.2", "epsilon_per_query: 0.3"))
    at.checkbox(key="dry_use_editor").check()
    at.button(key="dry_submit").click().run()
    epsilon = re.search(r"\*\*Cost:\*\* ε ([0-9.]+)", texts(at))
    assert epsilon is not None and float(epsilon.group(1)) == pytest.approx(0.3)
    assert policy_owner.action("stockade.policy.get")["version"] == live["version"]

    at.checkbox(key="dry_use_editor").uncheck()
    at.selectbox(key="dry_user").select("rita")
    at.text_area(key="dry_query").set_value("SELECT patient_id FROM oncology.patients")
    at.button(key="dry_submit").click().run()
    [refused] = errors(at)
    assert refused.startswith("Refused for rita (researcher): Unknown column 'patient_id'")


def test_dataset_cap_set_and_removed(policy_owner):  # type: ignore[no-untyped-def]
    at = console(policy_owner, "page_users.py")
    at.selectbox(key="cap_dataset").select("oncology")
    at.number_input(key="cap_epsilon").set_value(40.0)
    at.number_input(key="cap_delta").set_value(0.001)
    at.button(key="cap_submit").click().run()
    assert not errors(at), errors(at)
    assert "Cap on 'oncology': ε 40" in texts(at)
    [ann] = policy_owner.action("stockade.budget.list", {"user": "ann"})
    assert ann["cap_epsilon"] == pytest.approx(40.0) and ann["cap_delta"] == pytest.approx(0.001)
    assert "dataset cap ε 40" in " ".join(str(p.proto.text) for p in at.get("progress"))

    at.number_input(key="cap_epsilon").set_value(None)
    at.number_input(key="cap_delta").set_value(None)
    at.button(key="cap_submit").click().run()
    assert "Cap on 'oncology' removed." in texts(at)
    [ann] = policy_owner.action("stockade.budget.list", {"user": "ann"})
    assert ann["cap_epsilon"] is None


def test_a_session_the_gateway_ended_goes_back_to_login(  # type: ignore[no-untyped-def]
        own_gateway, policy_owner):
    name = f"o_{uuid.uuid4().hex[:6]}"
    policy_owner.action("stockade.users.create", {"name": name, "role": "owner",
                                                  "password": PASSWORD})
    at = console(GatewayClient(own_gateway, name, PASSWORD), "page_requests.py")
    policy_owner.action("stockade.users.reset_password", {"name": name,
                                                          "password": PASSWORD + "-new"})
    at.switch_page("page_users.py").run()
    assert CLIENT_KEY not in at.session_state
    assert ("The gateway ended your session (it expired, or your password was reset); "
            "log in again.") in [w.value for w in at.warning]
    assert at.text_input(key="login_user").value == ""


# ---------------------------------------------------------------- network


def test_network_page_shows_each_domains_health(gateway, owner, monkeypatch):  # type: ignore[no-untyped-def]
    import socket

    from tests.network_fixtures import start_network

    with socket.socket() as sock:  # a port nobody listens on: a domain that is down
        sock.bind(("127.0.0.1", 0))
        down = f"grpc://127.0.0.1:{sock.getsockname()[1]}"
    at = console(owner, "page_network.py")
    assert "No network node is configured" in texts(at)
    server, url = start_network({"st_marys": gateway.url, "west_wing": down})
    try:
        monkeypatch.setenv("STOCKADE_NETWORK", url)
        at = console(owner, "page_network.py")
        # The network answers logged-in users only: the page asks for a login of its own.
        assert "answers logged-in users only" in texts(at) and not at.dataframe
        assert at.text_input(key="network_user").value == "owner"  # the console's user
        at.text_input(key="network_password").set_value("not-the-password")
        at.button(key="network_submit").click().run()
        [message] = errors(at)
        assert message.startswith("Wrong user name or password")
        at.text_input(key="network_password").set_value(USERS["owner"][1])
        at.button(key="network_submit").click().run()
        said = texts(at)
        assert "1 of 2 domains up" in said
        assert "Domain 'west_wing' is down" in said
        health = table(at, "domain", "state").set_index("domain")
        assert health.loc["st_marys", "state"] == "up"
        assert health.loc["west_wing", "state"] == "down"
        at.button(key="network_logout").click().run()
        assert "answers logged-in users only" in texts(at)
    finally:
        server.shutdown()
