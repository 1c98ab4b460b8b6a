"""End-to-end: three real domains on loopback and a network node over them.

Each domain has its own data and policy (see ``tests/network_fixtures.py``).
Tests that stop or slow a domain use a domain or a proxy of their own, so the
shared domains stay up for every test.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from network_fixtures import (
    DOMAINS,
    USERS,
    ZOE,
    DelayProxy,
    RunningDomain,
    anonymous_call_errors,
    connect,
    ground_truth,
    network_yaml,
    start_domain,
    start_network,
    unauthenticated,
)

from gateway.flightsql import flight_sql_pb2 as pb
from gateway.flightsql.server import pack, unpack
from gateway.remote import GatewayClient

pytestmark = pytest.mark.filterwarnings(
    "ignore:pandas only supports SQLAlchemy:UserWarning",
)

SCREENINGS = "oncology.screenings"


@dataclass
class Lab:
    domains: dict[str, RunningDomain]
    server: Any
    url: str
    root: Path

    def direct(self, name: str, user: str, password: str | None = None) -> Any:
        return connect(self.domains[name].url, user, password)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("network")
    domains = {name: start_domain(root / name, name) for name in DOMAINS}
    server, url = start_network({name: d.url for name, d in domains.items()})
    yield Lab(domains, server, url, root)
    server.shutdown()
    for d in domains.values():
        d.stop()


@pytest.fixture
def conns(lab: Lab) -> Iterator[Any]:
    opened: list[Any] = []

    def _connect(user: str, password: str | None = None, url: str | None = None,
                 **kwargs: str) -> Any:
        conn = connect(url or lab.url, user, password, **kwargs)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        try:
            conn.close()
        except adbc_driver_manager.Error:
            pass  # its network is gone already


def run(conn: Any, sql: str, params: Any = None) -> pa.Table:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()
    finally:
        cur.close()


def error_of(conn: Any, sql: str) -> adbc_driver_manager.Error:
    with pytest.raises(adbc_driver_manager.Error) as info:
        run(conn, sql)
    return info.value


def flight_client(url: str, user: str | None = None, password: str | None = None
                  ) -> tuple[flight.FlightClient, flight.FlightCallOptions]:
    client = flight.FlightClient(url)
    headers = []
    if user is not None:
        headers.append(client.authenticate_basic_token(user, password or USERS[user][1]))
    return client, flight.FlightCallOptions(headers=headers, timeout=30)


def budget(lab: Lab, name: str, user: str = "ann") -> dict[str, Any]:
    with GatewayClient(lab.domains[name].url, user, USERS[user][1]) as client:
        (entry,) = client.action("stockade.budget")
    return dict(entry)


# ---------------------------------------------------------------- catalogs


def test_catalogs_schemas_and_tables_through_adbc(conns):  # type: ignore[no-untyped-def]
    conn = conns("rita")
    objects = conn.adbc_get_objects().read_all().to_pylist()
    by_catalog = {c["catalog_name"]: c for c in objects}
    assert set(by_catalog) == {"st_marys", "city_general", "northern", "federated"}
    for name, catalog in by_catalog.items():
        (schema,) = catalog["catalog_db_schemas"]
        assert schema["db_schema_name"] == "oncology"
        (table,) = schema["db_schema_tables"]
        assert table["table_name"] == "screenings"
        columns = [c["column_name"] for c in table["table_columns"]]
        assert columns == ["screening_id", "site", "age", "test", "result", "tumor_size_mm"], name
    # The domain whose policy calls it 'northern_clinic' is 'northern' in the network.
    info = conn.adbc_get_table_schema("screenings", catalog_filter="northern",
                                      db_schema_filter="oncology")
    assert info.field("age").metadata[b"ARROW:FLIGHT:SQL:CATALOG_NAME"] == b"northern"


def test_listing_one_domain_forwards_the_analysts_credentials(lab, conns):  # type: ignore[no-untyped-def]
    # zoe exists in st_marys and city_general only: northern refuses her.
    conn = conns(ZOE[0], ZOE[2])
    objects = conn.adbc_get_objects().read_all().to_pylist()
    schemas = {c["catalog_name"]: c["catalog_db_schemas"] for c in objects}
    assert schemas["northern"] == []  # listed, with nothing she may see
    assert [s["db_schema_name"] for s in schemas["st_marys"]] == ["oncology"]
    client, options = flight_client(lab.url, ZOE[0], ZOE[2])
    command = pb.CommandGetDbSchemas(catalog="northern")
    with pytest.raises(flight.FlightUnauthenticatedError,
                       match="domain 'northern' rejected your credentials"):
        info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(command)), options)
        client.do_get(info.endpoints[0].ticket, options).read_all()


# ---------------------------------------------------------------- routing


def test_routing_streams_the_domains_answer_unchanged(lab, conns):  # type: ignore[no-untyped-def]
    network = conns("rita")
    for name in DOMAINS:
        direct = lab.direct(name, "rita")
        try:
            for sql in ("SELECT * FROM {} ORDER BY screening_id",
                        "SELECT test, result, count(*) AS n, avg(age) AS mean_age FROM {} "
                        "GROUP BY ALL ORDER BY ALL"):
                via_network = run(network, sql.format(f"{name}.{SCREENINGS}"))
                straight = run(direct, sql.format(SCREENINGS))
                assert via_network.num_rows > 0
                assert via_network.equals(straight), (name, sql)
        finally:
            direct.close()


def test_routing_in_another_dialect_with_parameters(lab, conns):  # type: ignore[no-untyped-def]
    conn = conns("rita")
    got = run(conn, "/* dialect: tsql */ SELECT TOP 2 screening_id FROM "
                    "city_general.oncology.screenings WHERE age > ? ORDER BY screening_id",
              (60,))
    direct = lab.direct("city_general", "rita")
    try:
        want = run(direct, "SELECT screening_id FROM oncology.screenings WHERE age > 60 "
                           "ORDER BY screening_id LIMIT 2")
    finally:
        direct.close()
    assert got.column("screening_id").to_pylist() == want.column("screening_id").to_pylist()


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT * FROM oncology.screenings",
     "Name the domain of table 'oncology.screenings': write st_marys.oncology.screenings"),
    ("SELECT count(*) FROM st_marys.oncology.screenings a "
     "JOIN northern.oncology.screenings b USING (site)",
     "Queries may not mix catalogs: this one reads northern and st_marys"),
    ("SELECT * FROM st_mary.oncology.screenings", "Unknown catalog 'st_mary'. Did you mean "
                                                  "'st_marys'?"),
    ("SELECT nope FROM st_marys.oncology.screenings",
     "domain 'st_marys': Unknown column 'nope' in table 'screenings' (line 1, column 8)"),
])
def test_routing_refusals_say_what_to_do(conns, sql, message):  # type: ignore[no-untyped-def]
    err = error_of(conns("rita"), sql)
    assert message in str(err)
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT


def test_routed_dp_answer_is_paid_once(lab, conns):  # type: ignore[no-untyped-def]
    sql = "SELECT result, count(*) AS n FROM {} GROUP BY result"
    before = budget(lab, "city_general")
    got = run(conns("ann"), sql.format(f"city_general.{SCREENINGS}"))
    meta = got.schema.metadata
    spent = float(meta[b"stockade.dp.epsilon_spent"])
    assert spent > 0 and meta[b"stockade.dp.cached"] == b"false"
    after = budget(lab, "city_general")
    assert after["epsilon_spent"] == pytest.approx(before["epsilon_spent"] + spent, abs=1e-12)
    # The domain answers the same query again from its store, free: the same numbers.
    direct = lab.direct("city_general", "ann")
    try:
        again = run(direct, sql.format(SCREENINGS))
    finally:
        direct.close()
    assert again.schema.metadata[b"stockade.dp.cached"] == b"true"
    assert sorted(again.to_pylist(), key=str) == sorted(got.to_pylist(), key=str)
    assert budget(lab, "city_general")["epsilon_spent"] == after["epsilon_spent"]


def test_raw_pyarrow_flight_client(lab):  # type: ignore[no-untyped-def]
    client, options = flight_client(lab.url, "rita")
    query = pb.CommandStatementQuery(query="SELECT count(*) AS n FROM northern.oncology.screenings")
    info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(query)), options)
    table = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert table.column("n").to_pylist() == [DOMAINS["northern"]["rows"]]
    catalogs = pb.CommandGetCatalogs()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(catalogs)), options)
    names = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert names.column(0).to_pylist() == sorted(["city_general", "federated", "northern",
                                                  "st_marys"])


def test_every_call_needs_a_login_but_the_health_probe(lab):  # type: ignore[no-untyped-def]
    # Before: GetSqlInfo, table types, XDBC info, ListActions and catalog FlightInfo were
    # answered without credentials, and the status action gave every domain's URL.
    errors = anonymous_call_errors(lab.url)
    assert len(errors) > 30
    answered = sorted(name for name, exc in errors.items() if exc is None)
    assert answered == []
    wrong = {name: f"{type(exc).__name__}: {exc}" for name, exc in errors.items()
             if not unauthenticated(exc)}
    assert wrong == {}
    assert all("Authentication required" in str(exc) for exc in errors.values())
    client, options = flight_client(lab.url)
    (probe,) = client.do_action(flight.Action("stockade.network.health", b""), options)
    assert json.loads(probe.body.to_pybytes()) == {"status": "ok"}  # and nothing else
    client, options = flight_client(lab.url, "rita")
    status = json.loads(list(client.do_action(
        flight.Action("stockade.network.status", b""), options))[0].body.to_pybytes())
    assert status["network"] == "test_net"
    assert [d["name"] for d in status["domains"]] == list(DOMAINS)


def test_a_long_catalog_pattern_is_refused_before_asking_the_domains(lab):  # type: ignore[no-untyped-def]
    client, options = flight_client(lab.url, "rita")
    command = pb.CommandGetTables(table_name_filter_pattern="%" * 5000 + "zz")
    with pytest.raises(pa.ArrowInvalid, match=r"5002 characters long; this server accepts at "
                                              r"most 256 \(setting max_pattern_length\)"):
        client.get_flight_info(flight.FlightDescriptor.for_command(pack(command)), options)
    command = pb.CommandGetTables(table_name_filter_pattern="%" * 240 + "scr%ings")
    info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(command)), options)
    tables = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert set(tables.column("table_name").to_pylist()) == {"screenings"}


# ---------------------------------------------------------------- credentials


def test_wrong_password_is_refused_by_name(lab):  # type: ignore[no-untyped-def]
    with pytest.raises(adbc_driver_manager.Error) as info:
        connect(lab.url, "rita", "not-her-password").close()
    assert "Wrong user name or password" in str(info.value)
    assert "refused by city_general, northern, st_marys" in str(info.value)


def test_a_domain_that_rejects_the_analyst_is_named(lab, conns):  # type: ignore[no-untyped-def]
    conn = conns(ZOE[0], ZOE[2])
    assert run(conn, "SELECT count(*) AS n FROM st_marys.oncology.screenings"
               ).column("n")[0].as_py() > 0
    err = error_of(conn, "SELECT count(*) AS n FROM northern.oncology.screenings")
    assert "domain 'northern' rejected your credentials" in str(err)
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHENTICATED


def test_a_refused_password_is_not_retried(lab):  # type: ignore[no-untyped-def]
    # Every network login is a login at every domain; northern does not know zoe, and
    # its login throttle must not count a failure per network login.
    northern = lab.domains["northern"].domain

    def failures() -> int:
        return sum(1 for r in northern.audit.records(user=ZOE[0]) if r.kind == "login_failure")

    before = failures()
    for _ in range(3):
        conn = connect(lab.url, ZOE[0], ZOE[2])
        run(conn, "SELECT 1 AS one FROM city_general.oncology.screenings LIMIT 1")
        conn.close()
    assert failures() - before <= 1


def test_an_expired_domain_token_is_renewed(lab, conns):  # type: ignore[no-untyped-def]
    conn = conns("rita")
    sql = "SELECT count(*) AS n FROM st_marys.oncology.screenings"
    first = run(conn, sql)
    assert lab.domains["st_marys"].domain.store.revoke_tokens("rita") >= 1
    assert run(conn, sql).equals(first)


def test_closing_the_session_forgets_the_password(lab):  # type: ignore[no-untyped-def]
    sessions = lab.server.sessions
    conn = connect(lab.url, "rita")
    run(conn, "SELECT 1 AS one FROM st_marys.oncology.screenings LIMIT 1")
    live = [s for s in sessions._sessions.values() if s.user == "rita" and not s.closed]
    assert live
    count = len(live)
    conn.close()  # ADBC sends CloseSession
    assert len([s for s in sessions._sessions.values()
                if s.user == "rita" and not s.closed]) == count - 1


# ---------------------------------------------------------------- health and failures


def test_status_action_and_cli(lab, capsys, monkeypatch):  # type: ignore[no-untyped-def]
    from gateway.cli import main

    deadline = time.monotonic() + 10
    while any(d["state"] != "up" for d in lab.server.status()["domains"]):
        assert time.monotonic() < deadline, lab.server.status()
        time.sleep(0.1)
    monkeypatch.delenv("STOCKADE_PASSWORD", raising=False)
    # It logs in now (before, anyone could read every domain's URL).
    assert main(["network", "status", "--url", lab.url, "--user", "rita"]) == 2
    assert "No password to log in to" in capsys.readouterr().err
    monkeypatch.setenv("STOCKADE_PASSWORD", USERS["rita"][1])
    assert main(["network", "status", "--url", lab.url, "--user", "rita"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("network test_net: 3 of 3 domain(s) up")
    for name, d in lab.domains.items():
        assert name in out and d.url in out
    assert main(["network", "status", "--url", lab.url, "--user", "rita", "--format",
                 "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert all(d["latency_ms"] > 0 and d["checked_at"] for d in status["domains"])


@pytest.fixture
def spare(lab: Lab, tmp_path: Path) -> Iterator[tuple[RunningDomain, Any, str]]:
    """A domain of its own (a copy of northern's setup) and a network over it and st_marys."""
    domain = start_domain(tmp_path / "spare", "northern")
    server, url = start_network({"st_marys": lab.domains["st_marys"].url, "spare": domain.url},
                                settings="{health_interval_s: 0.2}",
                                own_names={"spare": DOMAINS["northern"]["policy_name"]})
    yield domain, server, url
    server.shutdown()
    domain.stop()


def test_a_stopped_domain_is_unavailable_by_name(spare, conns, capsys, monkeypatch):  # type: ignore[no-untyped-def]
    from gateway.cli import main

    monkeypatch.setenv("STOCKADE_USER", "rita")
    monkeypatch.setenv("STOCKADE_PASSWORD", USERS["rita"][1])

    domain, server, url = spare
    conn = conns("rita", url=url)
    sql = "SELECT count(*) AS n FROM spare.oncology.screenings"
    assert run(conn, sql).column("n")[0].as_py() == DOMAINS["northern"]["rows"]
    domain.stop()
    err = error_of(conn, sql)
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.IO  # gRPC UNAVAILABLE
    assert "domain 'spare' is unavailable" in str(err)
    # The other domain still answers, and new logins work without the stopped one.
    assert run(conns("rita", url=url), "SELECT count(*) AS n FROM st_marys.oncology.screenings"
               ).column("n")[0].as_py() > 0
    deadline = time.monotonic() + 10
    while server.health.health("spare").state != "down":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert main(["network", "status", "--url", url]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 domain(s) up" in out
    assert [line.split()[1] for line in out.splitlines()[2:]] == ["up", "down"]


def test_a_slow_domain_times_out_by_name(lab, conns):  # type: ignore[no-untyped-def]
    target = lab.domains["st_marys"].url.rsplit(":", 1)
    proxy = DelayProxy(("127.0.0.1", int(target[1]))).start()
    server, url = start_network({"slow": proxy.url, "city_general":
                                 lab.domains["city_general"].url}, timeout_s=1.0,
                                own_names={"slow": "st_marys"})
    try:
        conn = conns("rita", url=url)
        sql = "SELECT count(*) AS n FROM slow.oncology.screenings"
        assert run(conn, sql).column("n")[0].as_py() > 0
        proxy.delay_s = 1.5
        started = time.monotonic()
        err = error_of(conn, sql)
        assert time.monotonic() - started < 5
        assert "domain 'slow' did not answer within 1 s" in str(err)
        assert err.status_code == adbc_driver_manager.AdbcStatusCode.IO
    finally:
        proxy.stop()
        server.shutdown()


def test_network_command_serves_a_config(lab, tmp_path):  # type: ignore[no-untyped-def]
    config = tmp_path / "network.yaml"
    config.write_text(network_yaml({n: d.url for n, d in lab.domains.items()}))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "network", "--config",
                             str(config), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on grpc://127.0.0.1:"), line
        url = line.removeprefix("listening on ")
        conn = connect(url, "rita")
        try:
            assert run(conn, "SELECT count(*) AS n FROM northern.oncology.screenings"
                       ).column("n")[0].as_py() == DOMAINS["northern"]["rows"]
        finally:
            conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "network test_net: 3 domain(s)" in err


# ---------------------------------------------------------------- federated queries

AGGREGATES = ("SELECT test, count(*) AS n, sum(age) AS s, avg(age) AS a, var_samp(age) AS v, "
              "stddev_pop(tumor_size_mm) AS sd FROM {} GROUP BY test ORDER BY test")


def truth(lab: Lab, sql: str, names: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
    from network_fixtures import ground_truth

    chosen = names or tuple(lab.domains)
    return ground_truth([lab.domains[n].parquet for n in chosen], sql)


def as_floats(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(float(v) if not isinstance(v, str) and v is not None else v for v in row)
            for row in rows]


def test_federated_raw_aggregates_equal_the_union(lab, conns):  # type: ignore[no-untyped-def]
    got = run(conns("rita"), AGGREGATES.format("federated.oncology.screenings"))
    want = truth(lab, AGGREGATES.format("screenings"))
    rows = [tuple(r.values()) for r in got.to_pylist()]
    assert [r[0] for r in rows] == [w[0] for w in want]
    for row, expected in zip(as_floats(rows), as_floats(want), strict=True):
        assert row[0] == expected[0]
        assert row[1:-1] == pytest.approx(expected[1:], rel=1e-9), row
    # 'biopsy' exists at st_marys only
    assert [r[-1] for r in rows] == [1, 3, 3, 3, 3]
    meta = got.schema.metadata
    assert json.loads(meta[b"stockade.federated.domains"]) == list(DOMAINS)
    assert json.loads(meta[b"stockade.federated.status"]) == {n: "ok" for n in DOMAINS}


def test_federated_having_order_limit_and_dialect(lab, conns):  # type: ignore[no-untyped-def]
    sql = ("SELECT result, site, count(*) AS n FROM {} WHERE age >= 50 GROUP BY result, site "
           "HAVING count(*) > 100 ORDER BY n DESC, site LIMIT 3")
    got = run(conns("rita"), "/* dialect: postgres */ " + sql.format(
        "federated.oncology.screenings"))
    want = truth(lab, sql.format("screenings"))
    assert [(r["result"], r["site"], r["n"]) for r in got.to_pylist()] == want


def test_federated_dp_within_the_reported_intervals_and_charged(lab, conns):  # type: ignore[no-untyped-def]
    from network.federate import plan_federated

    sql = AGGREGATES.format("federated.oncology.screenings")
    part = "/* dialect: duckdb */ " + plan_federated(sql).domain_sql
    expected_cost = {}
    before = {}
    for name, d in lab.domains.items():
        with GatewayClient(d.url, "ann", USERS["ann"][1]) as client:
            expected_cost[name] = client.action("stockade.cost", {"query": part})["epsilon"]
        before[name] = budget(lab, name)["epsilon_spent"]
    got = run(conns("ann"), sql)
    meta = got.schema.metadata
    spent = json.loads(meta[b"stockade.federated.epsilon_spent"])
    for name in lab.domains:
        assert expected_cost[name] > 0
        assert spent[name] == pytest.approx(expected_cost[name], abs=1e-12)
        assert budget(lab, name)["epsilon_spent"] == pytest.approx(
            before[name] + expected_cost[name], abs=1e-12)
    want = {r[0]: r[1:] for r in as_floats(truth(lab, AGGREGATES.format("screenings")))}
    rows = got.to_pylist()
    big = {"cervical", "colonoscopy", "mammography", "psa"}
    assert big <= {r["test"] for r in rows}  # rare groups may be censored by dp
    # Every noisy value against its reported 95% half-width: at least 75% within one
    # half-width (false failure about 2e-4: binomial tail of 24 draws at 5%) and all within
    # four (Laplace tail 20**-4 per value, about 1.5e-4 for 24).
    ratios = []
    for column_index, column in enumerate(["n", "s", "a", "v", "sd"]):
        field = got.schema.field(column)
        widths = json.loads(field.metadata[b"stockade.dp.ci95_half_width_by_row"])
        for row, width in zip(rows, widths, strict=True):
            if row["test"] in big:
                assert width is not None and width > 0
                ratios.append(abs(float(row[column]) - want[row["test"]][column_index]) / width)
    assert len(ratios) == 20
    assert max(ratios) < 4, ratios
    assert sum(r <= 1 for r in ratios) >= 0.75 * len(ratios), ratios
    # The same query again is answered from each domain's store: nothing more is charged.
    again = run(conns("ann"), sql)
    assert json.loads(again.schema.metadata[b"stockade.federated.epsilon_spent"]) == {
        n: 0.0 for n in DOMAINS}


def granted_analyst(lab: Lab) -> tuple[str, str]:
    """An analyst of its own (its budget untouched by other tests), to whom every domain's
    owner granted ε 1000 and δ 0.5 on oncology."""
    user, password = "vera", "vera-password"
    for d in lab.domains.values():
        try:
            d.domain.store.get_user(user)
        except LookupError:
            d.domain.store.add_user(user, "analyst", password, {})
            d.domain.ledger.set_allowance(user, "oncology", 1000.0, 0.5)
    return user, password


#: Runs of the federated variance test (each a fresh charge at every domain).
VARIANCE_RUNS = 80
VARIANCES = ("SELECT test, var_pop(age) AS v, stddev_pop(tumor_size_mm) AS sd FROM {} "
             "WHERE age > -{} GROUP BY test ORDER BY test")


@pytest.mark.slow
def test_federated_variance_is_unbiased_and_its_interval_covers(lab, conns):  # type: ignore[no-untyped-def]
    """VAR_POP and STDDEV_POP merged from three dp domains, at their own ε, over 80 runs.

    Each run's query differs by a condition that every row meets (``age > -i``), so every
    run is a fresh charge with fresh noise (the same query would come from the domains'
    stores); the owner of each domain grants the analyst the budget for it. Per run and
    group the noise is about 50, 19, 14 and 33 % of VAR_POP(age) (cervical, colonoscopy,
    mammography, psa) and 8, 3, 2 and 5 % of STDDEV_POP(tumor_size_mm): over 80 runs the
    standard error of a mean is 5.6, 2.1, 1.5, 3.7 % and 0.9, 0.3, 0.2, 0.6 %. Checked:

    * per group and column, |mean − truth| < 2 % of the truth + 3 SE (SE from the runs);
    * per column, the groups' relative errors pooled with inverse-variance weights (SE
      about 1.1 % for VAR_POP, 0.2 % for STDDEV_POP), within 2 % + 3 SE. Before the parts
      were merged unclamped, VAR_POP(age) was about 30 % high here (cervical: median 420
      against 184);
    * the reported 95 % intervals cover the truth in 95 % ± 1.5 points (the accuracy asked
      of every dp interval) of the 640 (group, column, run) cases, give or take 3 binomial
      SE (0.86 points each). A variance the merge clamps at 0 cannot miss below, so
      cervical's VAR_POP covers about 97.5 %, the other cases about 95 %.

    Run with ``-s`` to see the measured bias, SE, median and coverage per group.
    """
    conn = conns(*granted_analyst(lab))
    want = {r[0]: r[1:] for r in as_floats(truth(lab, VARIANCES.format("screenings", 1)))}
    big = ("cervical", "colonoscopy", "mammography", "psa")
    found: dict[tuple[str, str], list[tuple[float, float | None]]] = {
        (g, c): [] for g in big for c in ("v", "sd")}
    for i in range(1, VARIANCE_RUNS + 1):
        got = run(conn, VARIANCES.format("federated.oncology.screenings", i))
        assert json.loads(got.schema.metadata[b"stockade.federated.epsilon_spent"]) == {
            "st_marys": pytest.approx(3.5), "city_general": pytest.approx(2.8),
            "northern": pytest.approx(4.2)}  # 7 noisy measurements at each domain's ε
        widths = {c: json.loads(got.schema.field(c).metadata[
            b"stockade.dp.ci95_half_width_by_row"]) for c in ("v", "sd")}
        for row, wv, ws in zip(got.to_pylist(), widths["v"], widths["sd"], strict=True):
            if row["test"] in big and row["domain_count"] == 3:  # not censored anywhere
                found[row["test"], "v"].append((row["v"], wv))
                found[row["test"], "sd"].append((row["sd"], ws))
    covered = total = 0
    for column, index in (("v", 0), ("sd", 1)):
        pooled_error = pooled_weight = 0.0
        for group in big:
            values = [v for v, _ in found[group, column]]
            assert len(values) >= VARIANCE_RUNS - 3  # a big group is censored very rarely
            true = want[group][index]
            mean = statistics.fmean(values)
            se = statistics.stdev(values) / math.sqrt(len(values))
            coverage = statistics.fmean(w is not None and abs(v - true) <= w
                                        for v, w in found[group, column])
            print(f"{column:>2} {group:<12} truth {true:9.3f} mean {mean:9.3f} bias "
                  f"{mean / true - 1:+7.2%} SE {se / true:6.2%} median "
                  f"{statistics.median(values):9.3f} coverage {coverage:6.1%} "
                  f"runs {len(values)}")  # shown with pytest -s
            assert abs(mean - true) < 0.02 * true + 3 * se, (group, column, mean, true, se)
            pooled_error += (mean / true - 1) / (se / true) ** 2
            pooled_weight += 1 / (se / true) ** 2
            covered += sum(w is not None and abs(v - true) <= w for v, w in found[group, column])
            total += len(values)
        pooled, pooled_se = pooled_error / pooled_weight, 1 / math.sqrt(pooled_weight)
        print(f"{column:>2} pooled bias {pooled:+.2%} SE {pooled_se:.2%}")
        assert pooled_se < 0.015
        assert abs(pooled) < 0.02 + 3 * pooled_se, (column, pooled, pooled_se)
    coverage = covered / total
    print(f"coverage {coverage:.1%} of {total}")
    assert abs(coverage - 0.95) < 0.015 + 3 * math.sqrt(0.95 * 0.05 / total), coverage


def test_the_network_asks_domains_for_unclamped_parts(lab, conns):  # type: ignore[no-untyped-def]
    """What a domain answers a federated part with x-stockade-dp-parts (as the network
    sends it) and without: the same charge, counts as drawn instead of rounded and >= 0."""
    from network.federate import plan_federated

    part = "/* dialect: duckdb */ " + plan_federated(
        "SELECT COUNT(age) AS n, VAR_POP(age) AS v FROM federated.oncology.screenings"
        " WHERE age > 1000").domain_sql  # no row: the noisy count is near 0
    url = lab.domains["northern"].url
    header = "adbc.flight.sql.rpc.call_header.x-stockade-dp-parts"
    user, password = granted_analyst(lab)
    plain = run(conns(user, password, url=url), part)
    parts = run(conns(user, password, url=url, **{header: "true"}), part)
    assert plain.schema.field("__p0").type == pa.int64()
    assert plain.column("__p0")[0].as_py() >= 0
    assert parts.schema.field("__p0").type == pa.float64()
    assert parts.column("__p0")[0].as_py() != round(parts.column("__p0")[0].as_py())
    # Parts take squares around the midpoint of age's bounds [0, 110]; answers around 0.
    assert parts.schema.field("__p2").metadata[b"stockade.dp.centre"] == b"55.0"
    assert b"stockade.dp.centre" not in plain.schema.field("__p2").metadata
    for table in (plain, parts):
        assert float(table.schema.metadata[b"stockade.dp.epsilon_spent"]) == \
            pytest.approx(1.8)  # count, sum, squares at 0.6
    err = error_of(conns(user, password, url=url, **{header: "maybe"}), part)
    assert "x-stockade-dp-parts takes true or false, not 'maybe'" in str(err)
    # The network asks for parts: each domain stored (and charged) the unclamped answer.
    federated = "SELECT AVG(age) AS a FROM federated.oncology.screenings WHERE age > 2000"
    run(conns(user, password), federated)
    part = "/* dialect: duckdb */ " + plan_federated(federated).domain_sql
    for d in lab.domains.values():
        principal = d.domain.principal_for(d.domain.store.get_user(user))
        for unclamped, stored in ((True, True), (False, False)):
            plan = d.domain.dp_plan(principal, part, unclamped=unclamped)
            assert (d.domain.ledger.answer(plan.key) is not None) is stored, d.name


def test_a_group_suppressed_by_a_domain_stays_suppressed(lab, conns):  # type: ignore[no-untyped-def]
    sql = "SELECT test, count(*) AS n FROM {} GROUP BY test ORDER BY test"
    # aud reads st_marys in aggregate mode (min_group_size 10), the others raw.
    got = {r["test"]: (r["n"], r["domain_count"])
           for r in run(conns("aud"), sql.format("federated.oncology.screenings")).to_pylist()}
    want = dict(truth(lab, sql.format("screenings")))
    assert "biopsy" not in got and want["biopsy"] == 3
    assert got == {t: (n, 3) for t, n in want.items() if t != "biopsy"}


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT count(DISTINCT site) FROM federated.oncology.screenings",
     "COUNT(DISTINCT …) cannot be merged across domains"),
    ("SELECT * FROM federated.oncology.screenings", "aggregate"),
    ("SELECT count(*) FROM federated.oncology.screenigs",
     "Table 'federated.oncology.screenigs' not found. Did you mean "
     "'federated.oncology.screenings'?"),
])
def test_federated_refusals(conns, sql, message):  # type: ignore[no-untyped-def]
    err = error_of(conns("rita"), sql)
    assert message in str(err)
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT


FEDERATED_COUNT = "SELECT count(*) AS n FROM federated.oncology.screenings"


def status_of(table: pa.Table) -> dict[str, str]:
    return dict(json.loads(table.schema.metadata[b"stockade.federated.status"]))


def test_a_domain_that_rejects_the_analyst_fails_or_is_left_out(lab, conns):  # type: ignore[no-untyped-def]
    conn = conns(ZOE[0], ZOE[2])
    err = error_of(conn, FEDERATED_COUNT)
    assert "domain 'northern' rejected your credentials" in str(err)
    assert "partial_results" in str(err)
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHENTICATED
    got = run(conn, "/* partial_results: true */ " + FEDERATED_COUNT)
    (n,) = truth(lab, "SELECT count(*) FROM screenings", ("st_marys", "city_general"))[0]
    assert got.column("n").to_pylist() == [n]
    status = status_of(got)
    assert status["st_marys"] == status["city_general"] == "ok"
    assert status["northern"].startswith("rejected: domain 'northern' rejected your credentials")


def test_partial_results_by_session_option_and_header(lab, spare, conns):  # type: ignore[no-untyped-def]
    domain, server, url = spare
    conn = conns("rita", url=url)
    assert run(conn, FEDERATED_COUNT).column("domain_count").to_pylist() == [2]
    # ann's session logs in at both domains and caches their catalogs before the stop
    client, options = flight_client(url, "ann")  # no prepare step: straight to GetFlightInfo
    info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(
        pb.CommandStatementQuery(query=FEDERATED_COUNT))), options)
    assert client.do_get(info.endpoints[0].ticket, options).read_all().num_rows == 1
    domain.stop()
    err = error_of(conn, FEDERATED_COUNT)
    assert "domain 'spare' is unavailable" in str(err)
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.IO
    # Once the network knows it is down, a federated query fails before any part runs:
    # st_marys charges nothing for a dp query that cannot be answered whole.
    deadline = time.monotonic() + 10
    while not server.health.is_down("spare"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = budget(lab, "st_marys")["epsilon_spent"]
    query = pb.CommandStatementQuery(query="/* epsilon: 0.33 */ " + FEDERATED_COUNT)
    with pytest.raises(flight.FlightUnavailableError, match="domain 'spare' is unavailable"):
        client.get_flight_info(flight.FlightDescriptor.for_command(pack(query)), options)
    assert budget(lab, "st_marys")["epsilon_spent"] == before
    conn.adbc_connection.set_options(
        **{"adbc.flight.sql.session.option.stockade.partial_results": "true"})
    got = run(conn, FEDERATED_COUNT)
    assert got.column("n").to_pylist() == [DOMAINS["st_marys"]["rows"] + 3]
    assert got.column("domain_count").to_pylist() == [1]
    status = status_of(got)
    assert status["st_marys"] == "ok"
    assert status["spare"].startswith("unavailable: domain 'spare' is unavailable")
    by_header = conns("rita", url=url, **{
        "adbc.flight.sql.rpc.call_header.x-stockade-partial-results": "true"})
    assert run(by_header, FEDERATED_COUNT).column("domain_count").to_pylist() == [1]


def test_a_slow_domain_fails_a_federated_query_by_name(lab, conns):  # type: ignore[no-untyped-def]
    target = lab.domains["st_marys"].url.rsplit(":", 1)
    proxy = DelayProxy(("127.0.0.1", int(target[1]))).start()
    server, url = start_network({"slow": proxy.url, "city_general":
                                 lab.domains["city_general"].url}, timeout_s=1.0,
                                own_names={"slow": "st_marys"})
    try:
        conn = conns("rita", url=url)
        assert run(conn, FEDERATED_COUNT).column("domain_count").to_pylist() == [2]
        proxy.delay_s = 1.5
        started = time.monotonic()
        err = error_of(conn, "SELECT count(*) AS n FROM federated.oncology.screenings "
                             "WHERE age > 40")
        assert "domain 'slow' did not answer within 1 s" in str(err)
        assert err.status_code == adbc_driver_manager.AdbcStatusCode.IO
        got = run(conn, "/* partial_results: true */ " + FEDERATED_COUNT)
        assert time.monotonic() - started < 8
        assert got.column("n").to_pylist() == [DOMAINS["city_general"]["rows"]]
        assert status_of(got) == {"slow": "timeout", "city_general": "ok"}
    finally:
        proxy.stop()
        server.shutdown()


# ---------------------------------------------------------------- search


def test_search_action_through_the_network(lab):  # type: ignore[no-untyped-def]
    def search(user: str, password: str, term: str) -> dict[str, Any]:
        client, options = flight_client(lab.url, user, password)
        body = json.dumps({"term": term}).encode()
        (result,) = client.do_action(flight.Action("stockade.search", body), options)
        return dict(json.loads(result.body.to_pybytes()))

    by_tag = search("rita", USERS["rita"][1], "screening")
    assert sorted(r["domain"] for r in by_tag["results"]) == sorted(DOMAINS)
    assert all("tag" in r["matched"] for r in by_tag["results"])
    by_column = search(ZOE[0], ZOE[2], "tumor_size_mm")
    assert sorted(r["domain"] for r in by_column["results"]) == ["city_general", "st_marys"]
    assert all(r["matched"] == ["column"] for r in by_column["results"])
    assert by_column["domains"]["northern"].startswith("rejected: domain 'northern' rejected")


def test_a_prepared_ticket_names_its_own_parameters_through_the_network(lab):  # type: ignore[no-untyped-def]
    # Bind 90, ask for the ticket, bind 10, ask again: each ticket fetches its own answer.
    client, options = flight_client(lab.url, "rita")
    sql = "SELECT count(*) AS n FROM city_general.oncology.screenings WHERE age > ?"
    request = pack(pb.ActionCreatePreparedStatementRequest(query=sql))
    [created] = client.do_action(flight.Action("CreatePreparedStatement", request), options)
    handle = unpack(created.body.to_pybytes())[1].prepared_statement_handle
    command = flight.FlightDescriptor.for_command(
        pack(pb.CommandPreparedStatementQuery(prepared_statement_handle=handle)))
    tickets = []
    for age in (90, 10):
        params = pa.record_batch({"0": [age]})
        writer, reader = client.do_put(command, params.schema, options)
        writer.write_batch(params)
        writer.done_writing()
        reader.read()
        writer.close()
        tickets.append(client.get_flight_info(command, options).endpoints[0].ticket)
    assert tickets[0].ticket != tickets[1].ticket
    truth = {age: ground_truth([lab.domains["city_general"].parquet],
                               f"SELECT count(*) FROM screenings WHERE age > {age}")[0][0]
             for age in (90, 10)}
    assert truth[90] != truth[10]
    assert client.do_get(tickets[0], options).read_all().column("n").to_pylist() == [truth[90]]
    assert client.do_get(tickets[1], options).read_all().column("n").to_pylist() == [truth[10]]
    other, other_options = flight_client(lab.url, "aud")
    with pytest.raises(KeyError, match="Result ticket not found"):
        other.do_get(tickets[0], other_options).read_all()
