"""The Python client (`stockade.connect`) against the session gateway and a network.

Exact values are compared with DuckDB over the test data files; dp answers by
their accounting (ε spent and left, exactly) and their noise within bounds from
the reported scale.
"""

from __future__ import annotations

import itertools
import math
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from network_fixtures import DOMAINS, ground_truth, start_domain, start_network
from network_fixtures import USERS as NETWORK_USERS

import stockade
from tests.conftest import USERS

_names = itertools.count()
NOISE = ("Detail:", "FlightSQL", "Python exception", "INVALID_ARGUMENT", "UNAUTHENTICATED",
         "Vendor code", "(InvalidArgument", "grpc")


def clean(message: str) -> bool:
    return not any(word in message for word in NOISE)


@pytest.fixture
def conn(gateway: Any) -> Iterator[Callable[..., stockade.Connection]]:
    opened: list[stockade.Connection] = []

    def _connect(user: str, password: str | None = None) -> stockade.Connection:
        c = stockade.connect(gateway.url, user, password or USERS[user][1])
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()


@pytest.fixture
def analyst(gateway: Any) -> Iterator[str]:
    """A fresh user of role `analyst` (dp on oncology: ε 3.0, 0.1 per query)."""
    name = f"client_analyst_{next(_names)}"
    gateway.domain.store.add_user(name, "analyst", "analyst-password", {})
    yield name
    gateway.domain.store.remove_user(name)


def truth(root: Path, sql: str, *, site: str | None = None) -> list[tuple[Any, ...]]:
    """``sql`` on DuckDB over the screenings file, as the policy shows it."""
    data = root / "data"
    where = f"WHERE site = '{site}'" if site else ""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA oncology")
    con.execute(f"CREATE VIEW oncology.screenings AS SELECT * EXCLUDE (patient_id) "
                f"FROM '{data / 'screenings.parquet'}' {where}")
    rows = con.execute(sql).fetchall()
    con.close()
    return rows


# ---------------------------------------------------------------- SQL → polars, arrow, pandas

GROUPED = ("SELECT site, count(*) AS n, sum(age) AS total, avg(age) AS mean_age "
           "FROM oncology.screenings WHERE age > 40 GROUP BY site ORDER BY site")


def test_an_answer_cut_at_max_rows_says_so(gateway, conn):  # type: ignore[no-untyped-def]
    carl = conn("carl")  # clinician: at most 100 rows
    sql = "SELECT screening_id FROM oncology.screenings"
    with pytest.warns(stockade.TruncatedAnswerWarning, match="The answer stops at 100 rows"):
        df = carl.sql(sql)
    assert (df.height, df.truncated, df.max_rows) == (100, True, 100)
    with pytest.warns(stockade.TruncatedAnswerWarning):
        frame = carl.pandas(sql)
    assert (len(frame), frame.attrs["truncated"], frame.attrs["max_rows"]) == (100, True, 100)
    whole = carl.sql(sql + " LIMIT 100")  # no warning (warnings are errors here)
    assert (whole.height, whole.truncated, whole.max_rows) == (100, False, None)
    assert carl.pandas(sql + " LIMIT 100").attrs["truncated"] is False


def test_sql_is_a_polars_dataframe_with_exact_values(gateway, conn):  # type: ignore[no-untyped-def]
    df = conn("rita").sql(GROUPED)
    assert isinstance(df, pl.DataFrame) and isinstance(df, stockade.DataFrame)
    assert df.privacy is None
    assert df.columns == ["site", "n", "total", "mean_age"]
    want = truth(gateway.root, GROUPED)
    got = df.rows()
    assert [(r[0], r[1], int(r[2])) for r in got] == [(w[0], w[1], int(w[2])) for w in want]
    assert [r[3] for r in got] == pytest.approx([w[3] for w in want], rel=1e-12)
    # polars operations give plain polars frames: the privacy belongs to the answer
    assert type(df.filter(pl.col("n") > 0)) is pl.DataFrame


def test_arrow_and_pandas(gateway, conn):  # type: ignore[no-untyped-def]
    c = conn("rita")
    table = c.arrow(GROUPED)
    assert isinstance(table, pa.Table)
    assert table.column("n").to_pylist() == [w[1] for w in truth(gateway.root, GROUPED)]
    frame = c.pandas(GROUPED)
    assert isinstance(frame, pd.DataFrame)
    assert frame["site"].tolist() == table.column("site").to_pylist()
    assert frame.attrs["privacy"] is None


def test_context_manager_closes(gateway):  # type: ignore[no-untyped-def]
    with stockade.connect(gateway.url, "rita", USERS["rita"][1]) as c:
        assert c.sql("SELECT count(*) AS n FROM registry.codes").rows() == [(5,)]
    assert c.closed
    c.close()  # twice is fine
    with pytest.raises(stockade.InputError, match="This connection is closed"):
        c.sql("SELECT 1")


def test_password_from_the_environment(gateway, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STOCKADE_PASSWORD", USERS["rita"][1])
    with stockade.connect(gateway.url, user="rita") as c:
        assert c.sql("SELECT 1 AS one").rows() == [(1,)]
    monkeypatch.delenv("STOCKADE_PASSWORD")
    with pytest.raises(stockade.InputError, match=r"pass password=… or set \$STOCKADE_PASSWORD"):
        stockade.connect(gateway.url, user="rita")


# ---------------------------------------------------------------- errors


def test_wrong_password_is_an_authentication_error(gateway):  # type: ignore[no-untyped-def]
    with pytest.raises(stockade.AuthenticationError) as info:
        stockade.connect(gateway.url, "rita", "not-the-password")
    assert str(info.value) == "Wrong user name or password."


def test_unreachable_gateway(gateway):  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(stockade.UnavailableError) as info:
        stockade.connect(f"grpc://127.0.0.1:{port}", "rita", "x")
    assert str(info.value).startswith(f"Cannot reach grpc://127.0.0.1:{port}: is it running?")
    with pytest.raises(stockade.InputError, match="use grpc://HOST:PORT"):
        stockade.connect(f"http://127.0.0.1:{port}", "rita", "x")


@pytest.mark.parametrize(("sql", "kind", "message", "position"), [
    ("SELECT site,\n       nope FROM oncology.screenings", stockade.UnknownColumnError,
     "Unknown column 'nope' in table 'screenings' (line 2, column 8)", (2, 8)),
    ("SELECT count(*) FROM oncology.screenigs", stockade.TableNotFoundError,
     "Table 'oncology.screenigs' not found. Did you mean 'oncology.screenings'? "
     "(line 1, column 31)", (1, 31)),
    ("SELECT * FROM oncology.secret_stuff", stockade.TableNotFoundError,
     "Table 'oncology.secret_stuff' not found", (1, 24)),
    ("SELECT read_csv('/etc/passwd')", stockade.SqlError,
     "Function 'read_csv' is not allowed (line 1, column 8)", (1, 8)),
    ("DROP TABLE oncology.screenings", stockade.InputError, "DROP statements are refused",
     None),
])
def test_sql_errors_are_readable(conn, sql, kind, message, position):  # type: ignore[no-untyped-def]
    with pytest.raises(kind) as info:
        conn("rita").sql(sql)
    err = info.value
    assert message in str(err)
    assert clean(str(err)), str(err)
    if position is not None:
        assert (err.line, err.col) == position


def test_options_keep_error_positions_and_dialects_work(conn):  # type: ignore[no-untyped-def]
    c = conn("rita")
    top = c.sql("SELECT TOP 3 site FROM oncology.screenings ORDER BY site", dialect="tsql")
    assert top.rows() == [("east",)] * 3
    # The dialect goes as a header: the SQL is sent as written, positions stay right.
    with pytest.raises(stockade.UnknownColumnError) as info:
        c.sql("SELECT nope::text FROM oncology.screenings", dialect="postgres")
    assert (info.value.line, info.value.col) == (1, 8)
    with pytest.raises(stockade.InputError, match="Did you mean 'postgres'"):
        c.sql("SELECT 1", dialect="postgresql")
    with pytest.raises(stockade.InputError, match="give it once"):
        c.sql("/* dialect: tsql */ SELECT 1", dialect="postgres")
    assert c.sql("/* dialect: postgres */ SELECT 1::text AS x", dialect="postgres").rows() == [
        ("1",)]


# ---------------------------------------------------------------- dp answers: privacy metadata


def test_dp_answer_carries_its_privacy(gateway, analyst):  # type: ignore[no-untyped-def]
    with stockade.connect(gateway.url, analyst, "analyst-password") as c:
        sql = "SELECT count(*) AS n FROM oncology.screenings"
        assert c.cost(sql)["epsilon"] == 0.1
        df = c.sql(sql)
        p = df.privacy
        assert isinstance(p, stockade.Privacy)
        assert p.epsilon_spent == 0.1 and p.delta_spent == 0.0  # the grant's epsilon_per_query
        assert p.epsilon_remaining == pytest.approx(2.9, abs=1e-12)
        assert p.cached is False and p.federated is None
        noise = p.columns["n"]
        assert noise.mechanism == "laplace" and not noise.derived
        assert noise.scale is not None and noise.scale > 0
        # A count is a whole number: the smallest whole half-width covering 95 %.
        assert noise.ci95_half_width == math.ceil(noise.scale * math.log(20) - 0.5)
        (exact,) = truth(gateway.root, sql)[0]
        assert abs(df["n"][0] - exact) < 25 * noise.scale  # P(fail) = e^-25

        # The next query: remaining decreases by exactly what it cost.
        second = c.sql("SELECT site, count(*) AS n, avg(age) AS a FROM oncology.screenings "
                       "GROUP BY site", epsilon=0.25)
        q = second.privacy
        assert q is not None and q.epsilon_spent > 0
        assert q.epsilon_remaining == pytest.approx(2.9 - q.epsilon_spent, abs=1e-12)
        assert q.columns["a"].derived and q.columns["a"].scale is None
        assert len(q.columns["a"].scales) == 2
        (balance,) = c.budget()
        assert balance["epsilon_spent"] == pytest.approx(0.1 + q.epsilon_spent, abs=1e-12)
        assert balance["epsilon_remaining"] == pytest.approx(q.epsilon_remaining, abs=1e-12)

        # The same question again: the same answer, from the cache, at no cost.
        again = c.sql(sql)
        assert again.privacy is not None and again.privacy.cached
        assert again.privacy.epsilon_spent == 0.0
        assert again["n"][0] == df["n"][0]

        # epsilon= is this query's ε per noisy value.
        chosen = c.sql("SELECT count(*) AS n FROM oncology.screenings WHERE age > 30",
                       epsilon=0.5)
        assert chosen.privacy is not None and chosen.privacy.epsilon_spent == 0.5
        frame = c.pandas("SELECT count(*) AS n FROM oncology.screenings WHERE age > 31")
        assert frame.attrs["privacy"].epsilon_spent == 0.1


def test_dp_refusals_keep_the_gateways_message(gateway, analyst):  # type: ignore[no-untyped-def]
    with stockade.connect(gateway.url, analyst, "analyst-password") as c:
        with pytest.raises(stockade.SqlError, match="dp mode returns aggregates only") as info:
            c.sql("SELECT site FROM oncology.screenings")
        assert clean(str(info.value))
        with pytest.raises(stockade.BudgetExhaustedError, match="exhausted") as budget:
            c.sql("SELECT count(*) FROM oncology.screenings", epsilon=5)
        assert clean(str(budget.value))
        assert c.budget()[0]["epsilon_spent"] == 0.0


def test_budget_requests(gateway, analyst):  # type: ignore[no-untyped-def]
    with stockade.connect(gateway.url, analyst, "analyst-password") as c:
        assert c.budget() == [{"dataset": "oncology", "epsilon_allowance": 3.0,
                               "epsilon_spent": 0.0, "epsilon_remaining": 3.0,
                               "delta_allowance": 1e-06, "delta_spent": 0.0,
                               "delta_remaining": 1e-06}]
        request = c.request_budget("oncology", 1.5, "Quarterly screening report")
        assert (request["user"], request["kind"], request["epsilon"], request["status"]) == (
            analyst, "budget", 1.5, "pending")
        assert [r["id"] for r in c.requests()] == [request["id"]]
        with pytest.raises(stockade.InputError, match="Did you mean 'oncology'"):
            c.request_budget("oncolgy", 1.0, "typo")


# ---------------------------------------------------------------- catalog and schema per role


def _tables(c: stockade.Connection) -> dict[str, tuple[str | None, list[str]]]:
    return {f"{r['dataset']}.{r['table']}": (r["mode"], r["columns"])
            for r in c.catalog().iter_rows(named=True)}


def patient_columns(root: Path) -> list[str]:
    """The columns of the patients file but the hidden ``patient_id``."""
    names = duckdb.sql(f"SELECT * FROM '{root / 'data' / 'patients.parquet'}' LIMIT 0").columns
    return [n for n in names if n != "patient_id"]


def test_catalog_as_each_role_sees_it(gateway, conn):  # type: ignore[no-untyped-def]
    rita = _tables(conn("rita"))
    assert set(rita) == {"oncology.patients", "oncology.screenings", "registry.regions",
                         "registry.events", "registry.codes", "registry.staff", "bulk.numbers"}
    patients = patient_columns(gateway.root)
    assert "zip" in patients
    assert rita["oncology.patients"] == ("raw", patients)
    carl = _tables(conn("carl"))
    assert set(carl) == {"oncology.patients", "oncology.screenings"}
    assert carl["oncology.patients"][1] == [n for n in patients if n != "zip"]
    assert {mode for mode, _ in _tables(conn("ann")).values()} == {"dp"}
    assert {mode for mode, _ in _tables(conn("aud")).values()} == {"aggregate"}
    frame = conn("aud").catalog()
    assert frame.columns == ["catalog", "dataset", "table", "mode", "description", "columns",
                             "types"]
    assert set(frame["catalog"]) == {"st_marys"}


def test_schema_as_each_role_sees_it(gateway, conn):  # type: ignore[no-untyped-def]
    assert conn("rita").schema("oncology.patients").names == patient_columns(gateway.root)
    carl = conn("carl").schema("st_marys.oncology.patients")
    assert "zip" not in carl.names and "patient_id" not in carl.names
    assert conn("rita").schema("oncology.screenings").field("age").type == pa.int32()
    with pytest.raises(stockade.TableNotFoundError,
                       match=r"Did you mean 'oncology\.screenings'\?"):
        conn("rita").schema("oncology.screenigs")
    with pytest.raises(stockade.TableNotFoundError, match="'registry.regions' not found"):
        conn("carl").schema("registry.regions")
    with pytest.raises(stockade.InputError, match="Name a table as dataset.table"):
        conn("rita").schema("screenings")


def test_search_needs_a_network(conn):  # type: ignore[no-untyped-def]
    with pytest.raises(stockade.NotSupportedError, match="network"):
        conn("rita").search("cancer")


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_gateway(test_root: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[str, Path]]:
    from gateway.serving import start_server
    from gateway.settings import load_settings
    from tests.test_tls import _self_signed

    directory = tmp_path_factory.mktemp("client-tls")
    cert, key = _self_signed(directory)
    settings = load_settings({"policy": str(test_root / "policy.yaml"),
                              "data_dir": str(directory / "state"), "port": 0,
                              "tls_cert": str(cert), "tls_key": str(key)}, env={})
    server, domain, url, _ = start_server(settings)
    role, password, attributes = USERS["rita"]
    domain.store.add_user("rita", role, password, attributes)
    yield url, cert
    server.shutdown()
    domain.close()


def test_tls_root_certs_as_a_path_or_pem(tls_gateway):  # type: ignore[no-untyped-def]
    url, cert = tls_gateway
    for certs in (cert, str(cert), cert.read_bytes()):
        with stockade.connect(url, "rita", USERS["rita"][1], tls_root_certs=certs) as c:
            assert c.sql("SELECT count(*) AS n FROM registry.codes").rows() == [(5,)]
            assert c.budget() == []  # actions go over TLS too
    with pytest.raises(stockade.InputError, match="Cannot read the TLS root certificates"):
        stockade.connect(url, "rita", "x", tls_root_certs=cert.parent / "missing.pem")
    with pytest.raises(stockade.UnavailableError,
                       match=f"Cannot connect to {re.escape(url)} over TLS: .*certificate.* "
                             "Pass tls_root_certs="):
        stockade.connect(url, "rita", USERS["rita"][1])  # the CA is not trusted


# ---------------------------------------------------------------- a network


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("client-network")
    domains = {name: start_domain(root / name, name) for name in DOMAINS}
    server, url = start_network({name: d.url for name, d in domains.items()})
    yield url, domains
    server.shutdown()
    for d in domains.values():
        d.stop()


def net(url: str, user: str) -> stockade.Connection:
    return stockade.connect(url, user, NETWORK_USERS[user][1])


FEDERATED = ("SELECT site, count(*) AS n, avg(age) AS mean_age FROM {} "
             "GROUP BY site ORDER BY site")


def test_federated_query_with_exact_values(network):  # type: ignore[no-untyped-def]
    url, domains = network
    with net(url, "rita") as c:
        assert c.is_network
        df = c.sql(FEDERATED.format("federated.oncology.screenings"))
    want = ground_truth([d.parquet for d in domains.values()], FEDERATED.format("screenings"))
    assert df.columns == ["site", "n", "mean_age", "domain_count"]
    assert [(r[0], r[1]) for r in df.rows()] == [(w[0], w[1]) for w in want]
    assert df["mean_age"].to_list() == pytest.approx([w[2] for w in want], rel=1e-12)
    assert df.privacy is not None  # a federated answer says which domains answered
    assert df.privacy.federated == {name: "ok" for name in DOMAINS}
    assert df.privacy.epsilon_spent == 0.0 and df.privacy.columns == {}


def test_federated_dp_privacy_per_domain(network):  # type: ignore[no-untyped-def]
    url, domains = network
    sql = "SELECT count(*) AS n FROM federated.oncology.screenings WHERE age > 45"
    with net(url, "ann") as c:
        df = c.sql(sql)
    p = df.privacy
    assert p is not None and p.domains is not None
    per_query = {name: spec["epsilon"] for name, spec in DOMAINS.items()}
    assert {n: d.epsilon_spent for n, d in p.domains.items()} == per_query
    assert {n: d.epsilon_remaining for n, d in p.domains.items()} == pytest.approx(
        {n: 20.0 - e for n, e in per_query.items()}, abs=1e-12)
    assert p.epsilon_spent == pytest.approx(sum(per_query.values()), abs=1e-12)
    assert p.epsilon_remaining == pytest.approx(20.0 - max(per_query.values()), abs=1e-12)
    noise = p.columns["n"]
    assert noise.ci95_half_width is not None and noise.ci95_half_width > 0
    assert noise.ci95_half_width_by_row == (noise.ci95_half_width,)
    (exact,) = ground_truth([d.parquet for d in domains.values()],
                            sql.replace("federated.oncology.", ""))[0]
    assert abs(df["n"][0] - exact) < 10 * noise.ci95_half_width
    with net(url, "ann") as c:
        budgets = {b["domain"]: b for b in c.budget()}
    assert {n: b["epsilon_spent"] for n, b in budgets.items()} == per_query
    assert {n: b["epsilon_remaining"] for n, b in budgets.items()} == {
        n: d.epsilon_remaining for n, d in p.domains.items()}


def test_routed_query_and_network_errors(network):  # type: ignore[no-untyped-def]
    url, domains = network
    with net(url, "rita") as c:
        df = c.sql("SELECT count(*) AS n FROM st_marys.oncology.screenings")
        assert df.rows() == ground_truth([domains["st_marys"].parquet],
                                         "SELECT count(*) FROM screenings")
        with pytest.raises(stockade.InputError, match="Name the domain") as info:
            c.sql("SELECT count(*) FROM oncology.screenings")
        assert clean(str(info.value))
        with pytest.raises(stockade.NotSupportedError, match="st_marys at grpc://"):
            c.requests()
        assert c.budget() == []  # rita reads no dataset in dp mode anywhere
        names = set(c.catalog()["catalog"])
        assert names == {"federated", *DOMAINS}
    with pytest.raises(stockade.AuthenticationError, match="no domain of the network") as auth:
        stockade.connect(url, "rita", "wrong-password")
    assert clean(str(auth.value))


def test_search(network):  # type: ignore[no-untyped-def]
    url, _ = network
    with net(url, "ann") as c:
        results = c.search("tumor")
    assert {r["domain"] for r in results} == set(DOMAINS)
    assert all(r["dataset"] == "oncology" and "column" in r["matched"] for r in results)
    with net(url, "ann") as c:
        assert c.search("no-such-topic-anywhere") == []


# ---------------------------------------------------------------- the documentation's snippets


def snippets(path: Path, section: str) -> list[tuple[str, str]]:
    """The ```python client=NAME blocks of ``section`` in ``path``, in order."""
    text = path.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    return re.findall(r"```python client=([\w-]+)\n(.*?)```", body, re.S)


def test_the_documented_snippets_run(gateway, network, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    net_url, _ = network
    name = f"client_docs_{next(_names)}"
    gateway.domain.store.add_user(name, "analyst", USERS["ann"][1], {})
    monkeypatch.setenv("STOCKADE_PASSWORD", USERS["ann"][1])
    blocks = snippets(Path(__file__).parents[1] / "docs" / "clients.md", "The Python client")
    assert [b for b, _ in blocks] == ["connect", "sql", "options", "budget", "network",
                                      "dataframe", "dataframe-join", "errors"]
    namespace: dict[str, Any] = {}
    try:
        for _, code in blocks:
            code = (code.replace('"grpc://127.0.0.1:8815", user="ann"',
                                 f'"{gateway.url}", user="{name}"')
                    .replace("grpc://127.0.0.1:8815", gateway.url)
                    .replace("grpc://127.0.0.1:8816", net_url))
            exec(compile(code, "docs/clients.md", "exec"), namespace)  # noqa: S102
        out = capsys.readouterr().out
        assert "Wrong user name or password." in out
        assert "2 8 Unknown column 'nope'" in out
        assert "Did you mean 'oncology.screenings'?" in out
        assert namespace["cheap"].privacy.epsilon_spent == 0.05
        assert namespace["df"].privacy is not None
    finally:
        for value in namespace.values():
            if isinstance(value, stockade.Connection):
                value.close()
        gateway.domain.store.remove_user(name)
