"""policy.access: the access decision, role × dataset × mode."""

from __future__ import annotations

import pytest
from golden import hospital_policy

from policy.access import catalog_for, table_access, visible_columns
from policy.principal import Principal

POLICY = hospital_policy()


@pytest.mark.parametrize(
    "role,dataset,table,mode",
    [
        ("clinician", "oncology", "screenings", "raw"),
        ("clinician", "oncology", "patients", "raw"),
        ("clinician", "billing", "invoices", None),
        ("clinician", "vault", "notes", None),
        ("researcher", "oncology", "screenings", "raw"),
        ("researcher", "billing", "invoices", "raw"),
        ("researcher", "billing", "rates", None),  # table grant overrides to deny
        ("auditor", "oncology", "screenings", "aggregate"),
        ("auditor", "billing", "invoices", None),
        ("analyst", "oncology", "patients", "dp"),
        ("owner", "oncology", "screenings", "raw"),  # admin: raw everywhere ...
        ("owner", "billing", "rates", "raw"),
        ("owner", "vault", "notes", None),  # ... except datasets it lists
        ("nobody", "oncology", "screenings", None),
        ("no_such_role", "oncology", "screenings", None),
        ("researcher", "no_such_dataset", "screenings", None),
        ("researcher", "oncology", "no_such_table", None),
    ],
)
def test_mode(role: str, dataset: str, table: str, mode: str | None) -> None:
    access = table_access(POLICY, Principal("u", role), dataset, table)
    assert (access.mode if access else None) == mode


def test_filters_are_table_then_grant() -> None:
    access = table_access(POLICY, Principal("u", "clinician"), "oncology", "screenings")
    assert access is not None
    assert access.row_filters == ("consent", "site = {user.site}")
    assert access.hidden == frozenset({"patient_id", "ssn", "zip"})
    assert dict(access.masks) == {"zip": "left(zip, 3) || '**'"}
    assert access.privacy_unit == "patient_id"


def test_aggregate_details() -> None:
    access = table_access(POLICY, Principal("u", "auditor"), "oncology", "screenings")
    assert access is not None and access.min_group_size == 10


def test_dp_details() -> None:
    access = table_access(POLICY, Principal("u", "analyst"), "oncology", "screenings")
    assert access is not None and access.epsilon_per_query == 0.1
    assert access.budget is not None and access.budget.epsilon == 3.0


def test_catalog_leaves_out_denied_tables() -> None:
    assert set(catalog_for(POLICY, Principal("u", "researcher"))) == {
        ("oncology", "screenings"),
        ("oncology", "patients"),
        ("billing", "invoices"),
    }
    assert catalog_for(POLICY, Principal("u", "nobody")) == {}


def test_visible_columns_keep_order_and_ignore_case() -> None:
    access = table_access(POLICY, Principal("u", "clinician"), "oncology", "screenings")
    assert access is not None
    columns = {"Patient_ID": "INT", "age": "INT", "SSN": "VARCHAR", "site": "VARCHAR"}
    assert list(visible_columns(access, columns)) == ["age", "site"]
