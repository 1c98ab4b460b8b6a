"""`dp` mode end to end: ADBC and raw Flight clients against the session gateway.

Accounting is checked exactly (ε spent and remaining); noisy values only within
bounds derived from the reported noise scale (a Laplace draw exceeds 25 scales
with probability e^-25).
"""

from __future__ import annotations

import itertools
import json

import adbc_driver_manager
import pyarrow.flight as flight
import pytest
from adbc_driver_manager import AdbcStatusCode

from tests.conftest import USERS

META = b"stockade.dp."
_names = itertools.count()


@pytest.fixture
def analyst(gateway):  # type: ignore[no-untyped-def]
    """A fresh analyst (role `analyst`: dp on oncology, ε 3.0, 0.1 per query)."""
    name = f"dp_analyst_{next(_names)}"
    gateway.domain.store.add_user(name, "analyst", "analyst-password", {})
    yield name
    gateway.domain.store.remove_user(name)


def adbc(gateway, user):  # type: ignore[no-untyped-def]
    return gateway.connect(user, "analyst-password")


def query(conn, sql):  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetch_arrow_table()
    finally:
        cur.close()


def meta(table, key):  # type: ignore[no-untyped-def]
    return float(table.schema.metadata[META + key.encode()])


def test_noisy_count_with_accounting_and_accuracy(gateway, analyst):
    conn = adbc(gateway, analyst)
    try:
        table = query(conn, "SELECT count(*) AS n FROM oncology.screenings")
    finally:
        conn.close()
    assert table.num_rows == 1
    spent = meta(table, "epsilon_spent")
    assert spent > 0
    assert meta(table, "epsilon_remaining") == pytest.approx(3.0 - spent, abs=1e-9)
    field_meta = table.schema.field("n").metadata
    scale = float(field_meta[META + b"scale"])
    half_width = float(field_meta[META + b"ci95_half_width"])
    assert half_width > scale > 0
    true = 20_000
    assert abs(table.column("n")[0].as_py() - true) < 25 * scale + 1


def test_repeat_is_free_and_identical(gateway, analyst):
    conn = adbc(gateway, analyst)
    try:
        first = query(conn, "SELECT avg(age) AS a FROM oncology.screenings WHERE site = 'east'")
        again = query(conn, "SELECT avg(age) AS a FROM oncology.screenings WHERE site = 'east'")
    finally:
        conn.close()
    assert again.column("a").to_pylist() == first.column("a").to_pylist()
    assert meta(again, "epsilon_spent") == 0
    assert meta(again, "epsilon_remaining") == meta(first, "epsilon_remaining")


def test_row_level_query_is_refused(gateway, analyst):
    conn = adbc(gateway, analyst)
    try:
        with pytest.raises(adbc_driver_manager.Error) as info:
            query(conn, "SELECT * FROM oncology.screenings")
    finally:
        conn.close()
    assert info.value.status_code == AdbcStatusCode.INVALID_ARGUMENT
    assert "Traceback" not in str(info.value)


def test_budget_exhausts_at_exactly_the_right_query(gateway, analyst):
    ledger = gateway.domain.ledger
    conn = adbc(gateway, analyst)
    try:
        first = query(conn, "SELECT count(*) AS n FROM oncology.screenings WHERE age > 0")
        cost = meta(first, "epsilon_spent")
        ledger.set_allowance(analyst, "oncology", 3.5 * cost, 1e-6)
        answered = 1
        for age in range(1, 10):
            try:
                query(conn, f"SELECT count(*) AS n FROM oncology.screenings WHERE age > {age}")
                answered += 1
            except adbc_driver_manager.Error as err:
                assert err.status_code == AdbcStatusCode.UNAUTHORIZED, str(err)
                assert "exhausted" in str(err) and "stockade requests budget" in str(err)
                break
    finally:
        conn.close()
    assert answered == 3
    balance = ledger.balance(analyst, "oncology")
    assert balance.spent_epsilon == pytest.approx(3 * cost, abs=1e-9)


def test_epsilon_option_in_a_comment_changes_the_cost(gateway, analyst):
    conn = adbc(gateway, analyst)
    try:
        base = query(conn, "SELECT count(*) AS n FROM oncology.screenings WHERE age > 20")
        double = query(conn, "/* epsilon: 0.2 */ "
                             "SELECT count(*) AS n FROM oncology.screenings WHERE age > 30")
    finally:
        conn.close()
    assert meta(double, "epsilon_spent") == pytest.approx(2 * meta(base, "epsilon_spent"))


def _flight(gateway, user):  # type: ignore[no-untyped-def]
    client = flight.connect(gateway.url)
    pair = client.authenticate_basic_token(user, "analyst-password")
    return client, flight.FlightCallOptions(headers=[pair])


def test_cost_action_previews_without_charging(gateway, analyst):
    client, options = _flight(gateway, analyst)
    sql = "SELECT site, count(*) AS n FROM oncology.screenings GROUP BY site"
    body = json.dumps({"query": sql}).encode()
    cost = json.loads(next(iter(client.do_action(flight.Action("stockade.cost", body),
                                                  options))).body.to_pybytes())
    assert cost["dataset"] == "oncology" and cost["epsilon"] > 0
    budget = json.loads(next(iter(client.do_action(flight.Action("stockade.budget", b"{}"),
                                                    options))).body.to_pybytes())
    assert budget == [{"dataset": "oncology", "epsilon_allowance": 3.0, "epsilon_spent": 0.0,
                       "epsilon_remaining": 3.0, "delta_allowance": 1e-06,
                       "delta_spent": 0.0, "delta_remaining": 1e-06}]
    conn = adbc(gateway, analyst)
    try:
        table = query(conn, sql)
    finally:
        conn.close()
    assert meta(table, "epsilon_spent") == pytest.approx(cost["epsilon"])
    assert set(table.column("site").to_pylist()) <= {"north", "south", "east", "west"}
    client.close()


def test_non_analysts_do_not_see_dp_budgets(gateway):
    client = flight.connect(gateway.url)
    pair = client.authenticate_basic_token("rita", USERS["rita"][1])
    options = flight.FlightCallOptions(headers=[pair])
    result = next(iter(client.do_action(flight.Action("stockade.budget", b"{}"), options)))
    assert json.loads(result.body.to_pybytes()) == []
    client.close()


def test_policy_explain_on_the_live_data_dir_predicts_the_charge(gateway, analyst):
    from gateway.policy_tools import explain, open_domain

    sql = "SELECT site, sum(age) AS s FROM oncology.screenings WHERE age < 60 GROUP BY site"
    with open_domain(gateway.root / "policy.yaml", gateway.root / "state") as owner_view:
        before = explain(owner_view, analyst, sql)
        assert before.dp is not None and before.dp.remaining_epsilon == 3.0
        conn = adbc(gateway, analyst)
        try:
            table = query(conn, sql)
        finally:
            conn.close()
        after = explain(owner_view, analyst, sql)
    assert meta(table, "epsilon_spent") == before.dp.cost_epsilon
    assert float(table.schema.metadata[META + b"delta_spent"]) == before.dp.cost_delta
    assert after.dp is not None and after.dp.answered_before and after.dp.charge == (0.0, 0.0)
    assert after.dp.remaining_epsilon == meta(table, "epsilon_remaining")
    assert len(gateway.domain.ledger.charges(analyst)) == 1  # explain charged nothing
