"""The analyst and owner actions (gateway.admin), through real Flight DoAction calls."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from tests.conftest import USERS

PASSWORD = "throwaway-password"


class Client:
    def __init__(self, url: str, user: str, password: str) -> None:
        self.client = flight.FlightClient(url)
        header = self.client.authenticate_basic_token(user, password)
        self.options = flight.FlightCallOptions(headers=[header])

    def __call__(self, kind: str, body: dict[str, Any] | None = None) -> Any:
        results = self.client.do_action(
            flight.Action(kind, json.dumps(body or {}).encode()), self.options)
        return json.loads(next(iter(results)).body.to_pybytes())

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def owner(gateway) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    client = Client(gateway.url, "owner", USERS["owner"][1])
    yield client
    client.close()


@pytest.fixture
def analyst(gateway, owner) -> Iterator[tuple[str, Client]]:  # type: ignore[no-untyped-def]
    """A fresh analyst (dp on oncology), created by the owner through the API."""
    name = f"an_{uuid.uuid4().hex[:8]}"
    created = owner("stockade.users.create",
                    {"name": name, "role": "analyst", "password": PASSWORD,
                     "attributes": {"site": "north"}})
    assert created["name"] == name and created["role"] == "analyst"
    client = Client(gateway.url, name, PASSWORD)
    yield name, client
    client.close()


def _oncology(budgets: list[dict[str, Any]]) -> dict[str, Any]:
    (entry,) = [b for b in budgets if b["dataset"] == "oncology"]
    return entry


def test_budget_request_approved_then_visible(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    before = _oncology(me("stockade.budget"))
    assert before["epsilon_allowance"] == pytest.approx(3.0)

    who = me("stockade.whoami")
    assert who["user"] == name and who["role"] == "analyst" and who["admin"] is False
    assert {"dataset": "oncology", "mode": "dp"} in who["datasets"]
    assert who["attributes"] == {"site": "north"}

    filed = me("stockade.request_budget",
               {"dataset": "oncology", "epsilon": 1.5, "reason": "Quarterly report"})
    assert filed["status"] == "pending" and filed["kind"] == "budget"
    assert filed["epsilon"] == pytest.approx(1.5) and filed["delta"] == 0.0
    pending = owner("stockade.requests.list", {"status": "pending"})
    assert filed["id"] in [r["id"] for r in pending]

    approved = owner("stockade.requests.approve", {"id": filed["id"]})
    assert approved["status"] == "approved" and approved["decided_by"] == "owner"
    assert approved["budget"]["epsilon_allowance"] == pytest.approx(4.5)

    after = _oncology(me("stockade.budget"))
    assert after["epsilon_allowance"] == pytest.approx(4.5)
    assert after["epsilon_remaining"] == pytest.approx(4.5)
    (mine,) = me("stockade.my_requests")
    assert mine["status"] == "approved" and mine["decided_at"]

    # A decided request cannot be decided again, and nothing is added twice.
    with pytest.raises(pa.ArrowInvalid, match="already approved"):
        owner("stockade.requests.approve", {"id": filed["id"]})
    with pytest.raises(pa.ArrowInvalid, match="already approved"):
        owner("stockade.requests.deny", {"id": filed["id"], "reason": "no"})
    assert _oncology(me("stockade.budget"))["epsilon_allowance"] == pytest.approx(4.5)


def test_approve_with_a_different_amount_and_deny(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    _, me = analyst
    first = me("stockade.request_budget",
               {"dataset": "oncology", "epsilon": 5, "delta": 1e-7, "reason": "big study"})
    approved = owner("stockade.requests.approve", {"id": first["id"], "epsilon": 0.5})
    assert approved["epsilon"] == pytest.approx(0.5)
    budget = _oncology(me("stockade.budget"))
    assert budget["epsilon_allowance"] == pytest.approx(3.5)
    assert budget["delta_allowance"] == pytest.approx(1.1e-6)

    second = me("stockade.request_access",
                {"dataset": "registry", "mode": "aggregate", "reason": "counts"})
    denied = owner("stockade.requests.deny", {"id": second["id"], "reason": "not needed"})
    assert denied["status"] == "denied" and denied["decision_reason"] == "not needed"
    assert [r["status"] for r in me("stockade.my_requests")] == ["approved", "denied"]


def test_owner_actions_refused_to_others(gateway, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    for kind, body in [
        ("stockade.users.list", {}),
        ("stockade.users.create", {"name": "x_sneaky", "role": "owner", "password": PASSWORD}),
        ("stockade.users.update", {"name": name, "role": "owner"}),
        ("stockade.budget.add", {"user": name, "dataset": "oncology", "epsilon": 100}),
        ("stockade.requests.list", {}),
        ("stockade.requests.approve", {"id": 1}),
    ]:
        with pytest.raises(flight.FlightUnauthorizedError, match="admin"):
            me(kind, body)
    assert gateway.domain.store.get_user(name).role == "analyst"
    assert _oncology(me("stockade.budget"))["epsilon_allowance"] == pytest.approx(3.0)
    with pytest.raises(LookupError):
        gateway.domain.store.get_user("x_sneaky")


def test_bad_bodies_change_nothing(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    cases = [
        (me, "stockade.request_budget", {"dataset": "oncolgy", "epsilon": 1, "reason": "r"},
         "Did you mean 'oncology'"),
        (me, "stockade.request_budget", {"dataset": "oncology", "epsilon": -1, "reason": "r"},
         "'epsilon'"),
        (me, "stockade.request_budget", {"dataset": "oncology", "epsilon": 1},
         "'reason' is required"),
        (me, "stockade.request_budget", {"dataset": "registry", "epsilon": 1, "reason": "r"},
         "dp mode"),
        (me, "stockade.request_access", {"dataset": "registry", "mode": "raww", "reason": "r"},
         "Did you mean 'raw'"),
        (owner, "stockade.budget.set", {"user": name + "x", "dataset": "oncology",
                                        "epsilon": 9}, f"Did you mean '{name}'"),
        (owner, "stockade.budget.add", {"user": name, "dataset": "oncology",
                                        "epsilon": "lots"}, "'epsilon'"),
        (owner, "stockade.users.create", {"name": "x_new", "role": "analist",
                                          "password": PASSWORD}, "Did you mean 'analyst'"),
        (owner, "stockade.users.update", {"name": name, "rolee": "owner"},
         "Did you mean 'role'"),
        (owner, "stockade.requests.approve", {"id": 10**9}, "'id'"),
        (owner, "stockade.requests.deny", {"id": 1}, "'reason' is required"),
        (owner, "stockade.requests.list", {"status": "pendng"}, "Did you mean 'pending'"),
    ]
    for client, kind, body, message in cases:
        with pytest.raises(pa.ArrowInvalid, match=message):
            client(kind, body)
    assert me("stockade.my_requests") == []
    assert _oncology(me("stockade.budget"))["epsilon_allowance"] == pytest.approx(3.0)
    assert gateway.domain.store.get_user(name).role == "analyst"
    with pytest.raises(LookupError):
        gateway.domain.store.get_user("x_new")


def test_users_and_budgets_by_the_owner(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    assert name in [u["name"] for u in owner("stockade.users.list")]
    updated = owner("stockade.users.update",
                    {"name": name, "attributes": {"site": "south"}})
    assert updated["attributes"] == {"site": "south"} and updated["role"] == "analyst"

    balance = owner("stockade.budget.set", {"user": name, "dataset": "oncology", "epsilon": 1})
    assert balance["epsilon_allowance"] == pytest.approx(1.0)
    assert balance["delta_allowance"] == pytest.approx(1e-6)  # the role's default δ
    balance = owner("stockade.budget.add",
                    {"user": name, "dataset": "oncology", "epsilon": 0.25})
    assert balance["epsilon_allowance"] == pytest.approx(1.25)
    assert _oncology(me("stockade.budget"))["epsilon_allowance"] == pytest.approx(1.25)

    owner("stockade.users.reset_password", {"name": name, "password": "another-password"})
    with pytest.raises(flight.FlightUnauthenticatedError):
        me("stockade.whoami")  # the old session ended
    fresh = Client(gateway.url, name, "another-password")
    try:
        assert fresh("stockade.whoami")["attributes"] == {"site": "south"}
        owner("stockade.users.update", {"name": name, "disabled": True})
        with pytest.raises(flight.FlightUnauthenticatedError):
            fresh("stockade.whoami")
    finally:
        fresh.close()
    with pytest.raises(pa.ArrowInvalid, match="yourself"):
        owner("stockade.users.update", {"name": "owner", "disabled": True})


def test_actions_are_listed(gateway, owner):  # type: ignore[no-untyped-def]
    names = [a.type for a in owner.client.list_actions(owner.options)]
    assert {"stockade.whoami", "stockade.requests.approve", "stockade.budget"} <= set(names)
    assert owner("stockade.whoami")["admin"] is True


# ---------------------------------------------------------------- denied = missing

DENIED, MISSING = "secret", "vaults"  # "secret" exists, analysts may not read it; same length


def answer(client: Client, kind: str, body: dict[str, Any]) -> bytes:
    """The raw answer to an action: its result's bytes, or the error's class and text."""
    try:
        results = list(client.client.do_action(
            flight.Action(kind, json.dumps(body).encode()), client.options))
    except (flight.FlightError, pa.ArrowException) as exc:
        return f"{type(exc).__name__}: {exc}".encode()
    return b"result: " + b"".join(r.body.to_pybytes() for r in results)


def anonymised(raw: bytes, dataset: str) -> bytes:
    """``raw`` with the dataset's name, and a request's id and filing time, blanked."""
    text = raw.decode().replace(dataset, "<dataset>")
    text = re.sub(r'"id": \d+', '"id": <id>', text)
    text = re.sub(r'"created_at": "[^"]*"', '"created_at": <time>', text)
    return text.encode()


@pytest.mark.parametrize(("kind", "body"), [
    ("stockade.request_budget", {"dataset": "{}", "epsilon": 1.0, "reason": "a study"}),
    ("stockade.request_budget", {"dataset": "{}", "epsilon": -1, "reason": "a study"}),
    ("stockade.request_access", {"dataset": "{}", "mode": "raw", "reason": "a study"}),
    ("stockade.request_access", {"dataset": "{}", "mode": "raww", "reason": "a study"}),
    ("stockade.cost", {"query": "SELECT count(*) AS n FROM {}.salaries"}),
])
def test_a_denied_dataset_answers_as_a_missing_one(gateway, analyst, kind, body):  # type: ignore[no-untyped-def]
    # Before: request_budget said "unknown dataset" for one and "not in dp mode" for the
    # other, and request_access refused the missing one but filed the denied one.
    _, me = analyst

    def ask(dataset: str) -> bytes:
        filled = {k: v.replace("{}", dataset) if isinstance(v, str) else v
                  for k, v in body.items()}
        return anonymised(answer(me, kind, filled), dataset)

    denied, missing = ask(DENIED), ask(MISSING)
    assert denied == missing
    assert b"Traceback" not in denied


def test_suggestions_come_only_from_what_the_analyst_sees(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    _, me = analyst
    budget = {"epsilon": 1.0, "reason": "a study"}
    for near_denied in ("secrt", "registri"):  # before: "Did you mean 'secret'?"
        raw = answer(me, "stockade.request_budget", {"dataset": near_denied, **budget})
        assert b"Did you mean" not in raw and b"secret" not in raw and b"registry" not in raw
    raw = answer(me, "stockade.request_budget", {"dataset": "oncolgy", **budget})
    assert b"Did you mean 'oncology'?" in raw  # a dataset the analyst reads in dp mode
    filed = me("stockade.request_access", {"dataset": "oncolgy", "mode": "raw",
                                           "reason": "typo"})
    assert filed["dataset"] == "oncolgy" and "Did you mean 'oncology'?" in filed["note"]
    assert "note" not in me("stockade.request_access",
                            {"dataset": "secrt", "mode": "raw", "reason": "near a denied one"})


def test_owners_see_whether_a_requested_dataset_exists(gateway, owner, analyst):  # type: ignore[no-untyped-def]
    name, me = analyst
    for dataset in (DENIED, MISSING):
        me("stockade.request_access", {"dataset": dataset, "mode": "aggregate",
                                       "reason": "for a study"})
    mine = {r["dataset"]: r for r in owner("stockade.requests.list", {"status": "pending"})
            if r["user"] == name}
    assert mine[DENIED]["dataset_in_policy"] is True
    assert mine[MISSING]["dataset_in_policy"] is False
    assert all("dataset_in_policy" not in r for r in me("stockade.my_requests"))
    approved = owner("stockade.requests.approve", {"id": mine[MISSING]["id"]})
    assert approved["note"].startswith(f"'{MISSING}' is not a dataset of the policy")
