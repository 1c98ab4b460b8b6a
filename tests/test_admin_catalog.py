"""``stockade.catalog`` (gateway.admin_catalog): each role sees only what it may query."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from tests.conftest import USERS


def _catalog(gateway: Any, user: str, body: dict[str, Any] | None = None) -> Any:
    client = flight.FlightClient(gateway.url)
    try:
        options = flight.FlightCallOptions(
            headers=[client.authenticate_basic_token(user, USERS[user][1])])
        [result] = client.do_action(
            flight.Action("stockade.catalog", json.dumps(body or {}).encode()), options)
        return json.loads(result.body.to_pybytes())
    finally:
        client.close()


@pytest.fixture(scope="module")
def catalogs(gateway: Any) -> Iterator[dict[str, list[dict[str, Any]]]]:
    yield {user: _catalog(gateway, user) for user in USERS}


def _tables(entries: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["dataset"], t["table"]): t for d in entries for t in d["tables"]}


def _columns(table: dict[str, Any]) -> list[str]:
    return [c["name"] for c in table["columns"]]


@pytest.mark.parametrize(("user", "datasets"), [
    ("rita", ["bulk", "oncology", "registry"]),
    ("carl", ["oncology"]),
    ("ann", ["oncology"]),
    ("aud", ["oncology"]),
    ("owner", ["bulk", "oncology", "registry", "secret"]),
])
def test_only_the_datasets_the_role_may_read(catalogs, user, datasets):  # type: ignore[no-untyped-def]
    assert [d["dataset"] for d in catalogs[user]] == datasets


@pytest.mark.parametrize(("user", "mode"), [
    ("rita", "raw"), ("carl", "raw"), ("ann", "dp"), ("aud", "aggregate"), ("owner", "raw"),
])
def test_mode_description_and_tags(catalogs, user, mode):  # type: ignore[no-untyped-def]
    (oncology,) = [d for d in catalogs[user] if d["dataset"] == "oncology"]
    assert oncology["mode"] == mode
    assert oncology["description"] == "Cancer screening results"
    assert oncology["tags"] == ["cancer", "screening"]
    assert [t["table"] for t in oncology["tables"]] == ["patients", "screenings"]
    assert {t["mode"] for t in oncology["tables"]} == {mode}


def test_hidden_columns_are_absent_for_every_role(catalogs):  # type: ignore[no-untyped-def]
    for user, entries in catalogs.items():
        tables = _tables(entries)
        assert "patient_id" not in _columns(tables[("oncology", "screenings")]), user
        assert "patient_id" not in _columns(tables[("oncology", "patients")]), user


def test_a_role_hidden_column_is_absent_for_that_role_only(catalogs):  # type: ignore[no-untyped-def]
    carl = _columns(_tables(catalogs["carl"])[("oncology", "patients")])
    rita = _columns(_tables(catalogs["rita"])[("oncology", "patients")])
    assert "zip" not in carl
    assert "zip" in rita
    assert carl == [c for c in rita if c != "zip"]


def test_columns_match_what_a_query_returns(gateway, catalogs, connect):  # type: ignore[no-untyped-def]
    table = _tables(catalogs["rita"])[("oncology", "screenings")]
    cur = connect("rita").cursor()
    cur.execute("SELECT * FROM oncology.screenings LIMIT 1")
    schema: pa.Schema = cur.fetch_arrow_table().schema
    cur.close()
    assert [(c["name"], c["type"]) for c in table["columns"]] == [
        (f.name, str(f.type)) for f in schema]
    # a masked column has its mask's type
    (zip_,) = [c for c in _tables(catalogs["rita"])[("oncology", "patients")]["columns"]
               if c["name"] == "zip"]
    assert zip_["type"] == "string"


def test_column_descriptions_come_from_the_policy(catalogs):  # type: ignore[no-untyped-def]
    descriptions = {c["name"]: c["description"]
                    for c in _tables(catalogs["rita"])[("oncology", "screenings")]["columns"]}
    assert set(descriptions.values()) == {""}  # the test policy describes no column


def test_it_takes_no_fields(gateway):  # type: ignore[no-untyped-def]
    with pytest.raises(pa.ArrowInvalid, match=r"Unknown field 'dataset'"):
        _catalog(gateway, "rita", {"dataset": "oncology"})


def test_it_is_listed_as_an_analyst_action(gateway):  # type: ignore[no-untyped-def]
    client = flight.FlightClient(gateway.url)
    try:
        options = flight.FlightCallOptions(
            headers=[client.authenticate_basic_token("ann", USERS["ann"][1])])
        actions = {a.type: a.description for a in client.list_actions(options)}
    finally:
        client.close()
    assert "stockade.catalog" in actions
    assert not actions["stockade.catalog"].startswith("Owner:")
