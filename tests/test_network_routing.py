"""network.routing and network.options: where a query goes, and with which options."""

from __future__ import annotations

import pytest

from gateway.errors import InputError, SqlError, SqlSyntaxError
from network.options import parse_options, resolve
from network.routing import route

DOMAINS = ["st_marys", "city_general"]


@pytest.mark.parametrize(("sql", "catalog", "sent"), [
    ("SELECT count(*) FROM st_marys.oncology.screenings",
     "st_marys", "SELECT count(*) FROM          oncology.screenings"),
    # quoted, spaced, another case: the whole catalog part is blanked
    ('SELECT 1 FROM "st_marys" . oncology.s JOIN ST_MARYS.oncology.p USING (x)',
     "st_marys",
     "SELECT 1 FROM " + " " * 13 + "oncology.s JOIN " + " " * 9 + "oncology.p USING (x)"),
    # lines and columns stay where they were
    ("SELECT site\nFROM city_general.oncology.screenings\nWHERE age > 3",
     "city_general", "SELECT site\nFROM              oncology.screenings\nWHERE age > 3"),
    # CTE names need no catalog
    ("WITH x AS (SELECT * FROM st_marys.o.s) SELECT * FROM x",
     "st_marys", "WITH x AS (SELECT * FROM          o.s) SELECT * FROM x"),
    # a table function is the domain's to refuse
    ("SELECT * FROM st_marys.o.s, read_csv('/etc/passwd')",
     "st_marys", "SELECT * FROM          o.s, read_csv('/etc/passwd')"),
    ("SELECT count(*) FROM federated.oncology.screenings",
     "federated", "SELECT count(*) FROM federated.oncology.screenings"),
])
def test_route(sql: str, catalog: str, sent: str) -> None:
    target = route(sql, "duckdb", DOMAINS)
    assert (target.catalog, target.sql) == (catalog, sent)


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT * FROM oncology.screenings",
     "Name the domain of table 'oncology.screenings': write st_marys.oncology.screenings to "
     "ask one domain, or federated.oncology.screenings to ask every domain that holds it "
     "(line 1, column 15)"),
    ("SELECT * FROM screenings", "Name the domain of table 'screenings'"),
    ("SELECT * FROM st_marys.o.s UNION ALL SELECT * FROM city_general.o.s",
     "Queries may not mix catalogs: this one reads city_general and st_marys."),
    ("SELECT * FROM federated.o.s, st_marys.o.s", "Queries may not mix catalogs"),
    ("SELECT * FROM city_generl.o.s",
     "Unknown catalog 'city_generl'. Did you mean 'city_general'? The network's catalogs are "
     "city_general, st_marys and federated (line 1, column 15)"),
    ("SELECT 1", "This query reads no table."),
])
def test_refusals(sql: str, message: str) -> None:
    with pytest.raises(SqlError) as info:
        route(sql, "duckdb", DOMAINS)
    assert str(info.value).startswith(message), str(info.value)


def test_syntax_errors_and_dialects() -> None:
    with pytest.raises(SqlSyntaxError):
        route("SELECT FROM WHERE", "duckdb", DOMAINS)
    target = route("SELECT TOP 3 x FROM st_marys.o.s", "tsql", DOMAINS)
    assert target.sql == "SELECT TOP 3 x FROM          o.s"


def test_options_comment_is_kept_for_the_domain_without_partial_results() -> None:
    sql = "/* dialect: tsql; partial_results: true */ SELECT TOP 1 x FROM st_marys.o.s"
    options = parse_options(sql)
    assert options.values == {"dialect": "tsql", "partial_results": "true"}
    assert len(options.for_domain) == len(sql) == len(options.blank)
    assert options.for_domain.startswith("/* dialect: tsql */ ")
    assert options.for_domain.endswith(" SELECT TOP 1 x FROM st_marys.o.s")
    target = route(options.blank, "tsql", DOMAINS, for_domain=options.for_domain)
    assert target.sql.startswith("/* dialect: tsql */ ")
    assert target.sql.endswith("SELECT TOP 1 x FROM          o.s")
    # a comment over several lines keeps its lines
    multi = "/* dialect: tsql;\n partial_results: true */\nSELECT 1 FROM st_marys.o.s"
    kept = parse_options(multi).for_domain
    assert kept.count("\n") == 2 and "partial_results" not in kept and "dialect: tsql" in kept
    # without partial_results the text is untouched
    plain = "/* epsilon: 0.5 */ SELECT 1"
    assert parse_options(plain).for_domain == plain


def test_resolve_most_specific_wins() -> None:
    headers = {"x-stockade-dialect": "postgres", "x-stockade-epsilon": "0.2",
               "x-stockade-partial-results": "true"}
    resolved = resolve(parse_options("SELECT 1"), {}, headers)
    assert (resolved.dialect, resolved.epsilon, resolved.delta, resolved.partial) == (
        "postgres", 0.2, None, True)
    session = {"stockade.dialect": "tsql", "stockade.epsilon": "0.3",
               "stockade.partial_results": False}
    resolved = resolve(parse_options("SELECT 1"), session, headers)
    assert (resolved.dialect, resolved.epsilon, resolved.partial) == ("tsql", 0.3, False)
    query = parse_options("/* dialect: spark; epsilon: 0.4; delta: 1e-7; partial_results: yes */"
                          " SELECT 1")
    resolved = resolve(query, session, headers)
    assert (resolved.dialect, resolved.epsilon, resolved.delta, resolved.partial) == (
        "spark", 0.4, 1e-7, True)
    assert resolve(parse_options("SELECT 1"), {}, {}).dialect == "duckdb"


@pytest.mark.parametrize(("sql", "message"), [
    ("/* partial: true */ SELECT 1", "Unknown query option 'partial'. Did you mean "
                                     "'partial_results'?"),
    ("/* partial_results: maybe */ SELECT 1", "partial_results takes true or false"),
    ("/* epsilon: -1 */ SELECT 1", "ε must be a positive number"),
    ("/* dialect: postgresql */ SELECT 1", "Unknown SQL dialect 'postgresql'. Did you mean "
                                           "'postgres'?"),
])
def test_bad_options(sql: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        resolve(parse_options(sql), {}, {})
    assert str(info.value).startswith(message), str(info.value)
