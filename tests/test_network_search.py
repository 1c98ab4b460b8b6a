"""Dataset search (network.search): matching and ranking, then through a real network."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.errors import AuthenticationError, InputError, UnavailableError
from gateway.remote import GatewayClient
from network.search import FIELDS, answer, gather, search, words
from tests.conftest import USERS


def _dataset(name: str, *, description: str = "", tags: tuple[str, ...] = (),
             tables: dict[str, list[str]] | None = None, mode: str = "raw",
             column_descriptions: dict[str, str] | None = None) -> dict[str, Any]:
    described = column_descriptions or {}
    return {"dataset": name, "description": description, "tags": list(tags), "mode": mode,
            "tables": [{"table": t, "description": f"{t} table", "mode": mode,
                        "columns": [{"name": c, "type": "int64",
                                     "description": described.get(c, "")} for c in columns]}
                       for t, columns in (tables or {}).items()]}


CATALOGS = {
    "st_marys": [
        _dataset("oncology", description="Cancer screening results", tags=("cancer", "screening"),
                 tables={"screenings": ["site", "age", "tumor_size_mm"],
                         "patients": ["sex", "birth_year"]},
                 column_descriptions={"age": "Age at screening, in years"}),
        _dataset("staffing", description="Nurses per ward", tables={"wards": ["ward", "nurses"]}),
    ],
    "city_general": [
        _dataset("oncology", description="Screenings at City General", tags=("Cancer",),
                 tables={"screenings": ["site", "age"]}, mode="dp"),
        _dataset("cancer", description="Regional cancer registry", tables={"cases": ["year"]}),
    ],
    "northern": [
        _dataset("cardiology", description="Echo results", tags=("heart",),
                 tables={"echo": ["ejection_fraction"]}),
    ],
}


def _hits(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["domain"], r["dataset"]) for r in results]


@pytest.mark.parametrize(("term", "expected"), [
    # exact dataset name first, then exact tags (by domain), then descriptions only
    ("cancer", [("city_general", "cancer"), ("city_general", "oncology"),
                ("st_marys", "oncology")]),
    ("CANCER", [("city_general", "cancer"), ("city_general", "oncology"),
                ("st_marys", "oncology")]),
    # an exact column name ranks above a column-name substring
    ("age", [("city_general", "oncology"), ("st_marys", "oncology")]),
    ("tumor", [("st_marys", "oncology")]),
    ("size_mm", [("st_marys", "oncology")]),
    ("ejection fraction", [("northern", "cardiology")]),
    ("nurses ward", [("st_marys", "staffing")]),
    ("heart", [("northern", "cardiology")]),
    ("registry", [("city_general", "cancer")]),
    ("genome", []),
    ("cancer heart", []),  # every word must match in the same dataset
])
def test_matches_and_ranking(term, expected):  # type: ignore[no-untyped-def]
    assert _hits(search(CATALOGS, term)) == expected


def test_exact_matches_rank_before_substrings_whatever_the_domain():  # type: ignore[no-untyped-def]
    # 'screening' is a tag of st_marys' oncology (exact) and a substring of city_general's
    # table name and description: the exact match comes first despite the domain order.
    results = search(CATALOGS, "screening")
    assert _hits(results) == [("st_marys", "oncology"), ("city_general", "oncology")]
    assert results[0]["matched"] == ["description", "tag", "table", "table_description",
                                     "column_description"]
    assert results[1]["matched"] == ["description", "table", "table_description"]
    # the exact table name ranks first too
    assert _hits(search(CATALOGS, "screenings")) == [("city_general", "oncology"),
                                                      ("st_marys", "oncology")]
    # a match in a name ranks above a match in descriptions only
    local = {"a": [_dataset("x", description="about the heart")], "b": [_dataset("heartbeat")]}
    assert _hits(search(local, "heart")) == [("b", "heartbeat"), ("a", "x")]


def test_matched_fields_are_reported_per_dataset_and_table():  # type: ignore[no-untyped-def]
    (result,) = search({"st_marys": CATALOGS["st_marys"]}, "years")
    assert result["matched"] == ["column_description"]
    tables = {t["table"]: t["matched"] for t in result["tables"]}
    assert tables == {"screenings": ["column_description"], "patients": []}
    (result,) = search({"st_marys": CATALOGS["st_marys"]}, "birth")
    assert result["matched"] == ["column"]
    assert {t["table"]: t["matched"] for t in result["tables"]} == {
        "screenings": [], "patients": ["column"]}
    (result,) = search({"northern": CATALOGS["northern"]}, "heart echo")
    assert result["matched"] == ["description", "tag", "table", "table_description"]
    assert set(result["matched"]) <= set(FIELDS)


def test_results_carry_the_whole_dataset_metadata():  # type: ignore[no-untyped-def]
    (result,) = search({"northern": CATALOGS["northern"]}, "heart")
    assert result == {
        "domain": "northern", "dataset": "cardiology", "description": "Echo results",
        "tags": ["heart"], "mode": "raw", "matched": ["tag"],
        "tables": [{"table": "echo", "description": "echo table", "mode": "raw", "matched": [],
                    "columns": [{"name": "ejection_fraction", "type": "int64",
                                 "description": ""}]}]}


@pytest.mark.parametrize("term", ["", "   ", "x" * 201])
def test_bad_terms_are_refused(term):  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="search term"):
        search(CATALOGS, term)


def test_words_are_lower_cased():  # type: ignore[no-untyped-def]
    assert words("Tumor\tSIZE") == ["tumor", "size"]


def test_gather_reports_each_failing_domain_and_keeps_the_others():  # type: ignore[no-untyped-def]
    def down() -> list[dict[str, Any]]:
        raise UnavailableError("domain 'b' is unavailable: connection refused")

    def rejects() -> list[dict[str, Any]]:
        raise AuthenticationError("domain 'c' rejected your credentials: wrong password")

    def odd() -> Any:
        return {"not": "a list"}

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("boom")

    catalogs, status = gather({"a": lambda: CATALOGS["northern"], "b": down, "c": rejects,
                               "d": odd, "e": broken})
    assert catalogs == {"a": CATALOGS["northern"]}
    assert status["a"] == "ok"
    assert status["b"] == "unavailable: domain 'b' is unavailable: connection refused"
    assert status["c"] == "rejected: domain 'c' rejected your credentials: wrong password"
    assert status["d"].startswith("error: 'stockade.catalog' answered dict")
    assert status["e"] == "error: RuntimeError: boom"


def test_answer_checks_the_term_before_asking_any_domain():  # type: ignore[no-untyped-def]
    asked: list[str] = []

    def fetch() -> list[dict[str, Any]]:
        asked.append("x")
        return []

    with pytest.raises(InputError):
        answer(" ", {"x": fetch})
    assert asked == []
    got = answer("heart", {"n": lambda: CATALOGS["northern"], "x": fetch})
    assert got == {"term": "heart", "results": search({"n": CATALOGS["northern"]}, "heart"),
                   "domains": {"n": "ok", "x": "ok"}}
    assert [r["domain"] for r in got["results"]] == ["n"]


# ---------------------------------------------------------------- through a real network


@pytest.fixture(scope="module")
def network(gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A network over the session's domain (st_marys), city_general, and a domain that is down."""
    from network_fixtures import start_domain, start_network

    city = start_domain(tmp_path_factory.mktemp("search") / "city_general", "city_general")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = f"grpc://127.0.0.1:{probe.getsockname()[1]}"
    server, url = start_network({"st_marys": gateway.url, "city_general": city.url,
                                 "offline": down}, timeout_s=5.0)
    yield url
    server.shutdown()
    city.stop()


def _search(url: str, user: str, term: str) -> dict[str, Any]:
    with GatewayClient(url, user, USERS[user][1]) as client:
        result: dict[str, Any] = client.action("stockade.search", {"term": term})
    return result


def _found(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["domain"], r["dataset"]) for r in answer["results"]]


def _columns(answer: dict[str, Any], domain: str, dataset: str, table: str) -> list[str]:
    (result,) = [r for r in answer["results"]
                 if (r["domain"], r["dataset"]) == (domain, dataset)]
    (entry,) = [t for t in result["tables"] if t["table"] == table]
    return [c["name"] for c in entry["columns"]]


def test_search_by_tag_across_domains(network):  # type: ignore[no-untyped-def]
    answer = _search(network, "rita", "screening")
    assert _found(answer) == [("city_general", "oncology"), ("st_marys", "oncology")]
    assert all("tag" in r["matched"] for r in answer["results"])
    assert answer["domains"]["st_marys"] == "ok"
    assert answer["domains"]["city_general"] == "ok"
    assert answer["domains"]["offline"].startswith("unavailable: ")
    assert "offline" in answer["domains"]["offline"]
    # the whole dataset as rita sees it at each domain
    assert _columns(answer, "st_marys", "oncology", "patients") == [
        "sex", "birth_year", "zip", "site", "consent"]
    assert "patient_id" not in _columns(answer, "city_general", "oncology", "screenings")


def test_search_by_column_name(network):  # type: ignore[no-untyped-def]
    answer = _search(network, "rita", "tumor_size")
    assert _found(answer) == [("city_general", "oncology"), ("st_marys", "oncology")]
    assert all(r["matched"] == ["column"] for r in answer["results"])
    assert _found(_search(network, "rita", "birth_year")) == [("st_marys", "oncology")]
    assert _found(_search(network, "rita", "bucket")) == [("st_marys", "bulk")]


@pytest.mark.parametrize(("user", "term", "expected"), [
    # hidden from every role: never found
    ("rita", "patient_id", []),
    ("owner", "patient_id", []),
    # a dataset denied to the role is not found; its owner finds it
    ("rita", "salar", []),
    ("owner", "salar", [("st_marys", "secret")]),
    # a column hidden from one role only: carl (clinician) does not find zip, rita does
    ("carl", "zip", []),
    ("rita", "zip", [("st_marys", "oncology")]),
    # a dataset outside the role's grants: ann (analyst) reads oncology only
    ("ann", "registry", []),
    ("rita", "registry", [("st_marys", "registry")]),
])
def test_results_are_only_what_the_analyst_may_see(network, user, term, expected):  # type: ignore[no-untyped-def]
    assert _found(_search(network, user, term)) == expected


def test_each_domain_shows_its_own_mode(network):  # type: ignore[no-untyped-def]
    answer = _search(network, "aud", "oncology")
    modes = {r["domain"]: r["mode"] for r in answer["results"]}
    assert modes == {"st_marys": "aggregate", "city_general": "raw"}


def test_a_domain_that_rejects_the_analyst_is_named(network):  # type: ignore[no-untyped-def]
    # carl exists at st_marys only
    answer = _search(network, "carl", "screening")
    assert _found(answer) == [("st_marys", "oncology")]
    assert answer["domains"]["city_general"].startswith("rejected: ")
    assert "city_general" in answer["domains"]["city_general"]


def test_a_bad_term_is_refused(network):  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="search term"):
        _search(network, "rita", "  ")


def test_the_search_command(network, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    from gateway.cli import main

    monkeypatch.setenv("STOCKADE_PASSWORD", USERS["rita"][1])
    assert main(["search", "tumor size", "--network", network, "--user", "rita"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("city_general.oncology  (raw; matched: column)\n")
    assert "\nst_marys.oncology  (raw; matched: column)\n" in out
    assert "  screenings  screening_id, site, " in out
    assert "federated.DATASET.TABLE" in out
    assert "warning: domain 'offline' was not searched: unavailable: " in err

    assert main(["search", "genome", "--network", network, "--user", "rita"]) == 0
    assert capsys.readouterr().out == "No dataset matches 'genome'.\n"

    assert main(["search", "heart", "--network", network, "--user", "rita",
                 "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["term"] == "heart" and answer["results"] == []
    assert set(answer["domains"]) == {"st_marys", "city_general", "offline"}

    monkeypatch.setenv("STOCKADE_PASSWORD", "wrong")
    assert main(["search", "cancer", "--network", network, "--user", "rita"]) == 2
    assert "error: Wrong user name or password" in capsys.readouterr().err
