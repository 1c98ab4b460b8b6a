"""The Domain without the server: planning, its cache, dialects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.domain import Domain
from gateway.errors import InputError
from policy.principal import Principal

SITES = "SELECT DISTINCT site FROM oncology.screenings"


@pytest.fixture(scope="module")
def domain(test_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Domain]:
    opened = Domain.open(test_root / "policy.yaml", tmp_path_factory.mktemp("domain-state"))
    yield opened
    opened.close()


def sites(domain: Domain, principal: Principal, sql: str = SITES, **kwargs: object) -> set[str]:
    reader = domain.execute(principal, sql, **kwargs)  # type: ignore[arg-type]
    return {row["site"] for row in reader.read_all().to_pylist()}


def test_users_with_different_attributes_never_share_a_plan(domain):
    north = Principal("carl", "clinician", {"site": "north"})
    south = Principal("cleo", "clinician", {"site": "south"})
    assert sites(domain, north) == {"north"}
    assert sites(domain, south) == {"south"}
    assert domain.plan(north, SITES) is not domain.plan(south, SITES)
    assert sites(domain, north) == {"north"}  # still, after south's plan was cached


def test_same_user_with_changed_attributes_gets_a_new_plan(domain):
    before = Principal("carl", "clinician", {"site": "north"})
    after = Principal("carl", "clinician", {"site": "east"})
    assert sites(domain, before) == {"north"}
    assert sites(domain, after) == {"east"}


def test_attribute_values_equal_in_python_but_not_in_sql_do_not_collide(domain):
    one = Principal("u", "clinician", {"site": 1})
    true = Principal("u", "clinician", {"site": True})  # 1 == True in Python
    assert "= 1" in domain.plan(one, SITES).sql
    assert "= TRUE" in domain.plan(true, SITES).sql


def test_a_repeated_query_is_planned_once(domain):
    rita = Principal("rita", "researcher")
    assert domain.plan(rita, SITES) is domain.plan(rita, SITES)


def test_dialect_is_part_of_the_plan_key(domain):
    rita = Principal("rita", "researcher")
    sql = 'SELECT "site" AS s FROM oncology.screenings LIMIT 1'
    # In DuckDB "site" is the column; in MySQL it is the string 'site'.
    duck = domain.execute(rita, sql).read_all().to_pylist()
    mysql = domain.execute(rita, sql, dialect="mysql").read_all().to_pylist()
    assert duck[0]["s"] in {"north", "south", "east", "west"}
    assert mysql == [{"s": "site"}]
    assert domain.plan(rita, sql) is not domain.plan(rita, sql, dialect="mysql")


def test_dialect_comment_and_parameter_agree(domain):
    carl = Principal("carl", "clinician", {"site": "north"})
    top = "SELECT TOP 2 site FROM oncology.screenings"
    assert sites(domain, carl, top, dialect="tsql") == {"north"}
    assert sites(domain, carl, f"/* dialect: tsql */ {top}") == {"north"}
    assert sites(domain, carl, f"/* dialect: tsql */ {top}", dialect="postgres") == {"north"}
    with pytest.raises(InputError, match="Did you mean 'tsql'"):
        domain.plan(carl, top, dialect="tsq")


def test_result_and_parameter_schemas_follow_the_dialect(domain):
    rita = Principal("rita", "researcher")
    schema = domain.result_schema(rita, "SELECT site::text AS s FROM oncology.screenings",
                                  dialect="postgres")
    assert schema.names == ["s"]
    params = domain.parameter_schema(
        rita, "SELECT TOP 1 site FROM oncology.screenings WHERE age > ?", dialect="tsql")
    assert len(params) == 1
