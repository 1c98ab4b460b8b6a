"""The analyst's CLI: ``stockade query``, ``catalog``, ``budget mine`` and ``requests mine|budget``.

In-process (``gateway.cli.main``) against the session gateway, one real process, a
TLS gateway, and a network of three domains. Answers written to files are compared
with the same query run directly through ADBC; dp accounting is checked exactly.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from gateway.cli import main
from gateway.remote import GatewayClient
from tests.conftest import USERS

ROOT = Path(__file__).resolve().parents[1]
ANALYST_PASSWORD = "analyst-password"
REGIONS = "SELECT code, name, beds FROM registry.regions ORDER BY code"
_names = itertools.count()


class Stdin(io.StringIO):
    """Standard input that is not a terminal."""

    def isatty(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STOCKADE_PASSWORD", "STOCKADE_USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stdin", Stdin())


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``stockade ARGV`` in-process as USER (password in ``$STOCKADE_PASSWORD``)."""

    def run(*argv: str, user: str = "rita", password: str | None = None,
            stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setenv("STOCKADE_PASSWORD", password or USERS[user][1])
        monkeypatch.setattr(sys, "stdin", Stdin(stdin))
        code = main([*argv, "--user", user])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def analyst(gateway):  # type: ignore[no-untyped-def]
    """A fresh analyst (role ``analyst``: dp on oncology, ε 3.0, 0.1 per query)."""
    name = f"cli_analyst_{next(_names)}"
    gateway.domain.store.add_user(name, "analyst", ANALYST_PASSWORD, {})
    yield name
    gateway.domain.store.remove_user(name)


def direct(gateway, user: str, sql: str) -> pa.Table:  # type: ignore[no-untyped-def]
    with gateway.connect(user) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------ query

def test_table_on_the_terminal(gateway, cli):  # type: ignore[no-untyped-def]
    code, out, err = cli("query", "--url", gateway.url, REGIONS)
    assert (code, err) == (0, "")
    assert out == (
        "code   name      beds\n"
        "-----  --------  ----\n"
        "east   Eastern    450\n"
        "north  Northern  1200\n"
        "south  Southern   900\n"
        "west   Western    300\n"
        "(4 rows)\n")


def test_table_shows_max_rows_then_how_many_more(gateway, cli):  # type: ignore[no-untyped-def]
    sql = "SELECT id, half FROM bulk.numbers WHERE id < {} ORDER BY id"
    code, out, _ = cli("query", "--url", gateway.url, "--max-rows", "3", sql.format(7))
    assert code == 0
    lines = out.splitlines()
    assert lines[:5] == ["id  half", "--  ----", " 0   0.0", " 1   0.5", " 2   1.0"]
    assert lines[5].startswith("… 4 more rows (7 in all; --max-rows N shows more")
    assert len(lines) == 6
    code, out, _ = cli("query", "--url", gateway.url, sql.format(60))  # default: 50
    lines = out.splitlines()
    assert lines[2 + 49].split() == ["49", "24.5"]
    assert lines[2 + 50].startswith("… 10 more rows (60 in all;")
    code, out, _ = cli("query", "--url", gateway.url, "--max-rows", "0", sql.format(60))
    assert out.splitlines()[-1] == "(60 rows)" and len(out.splitlines()) == 63


def test_footer_says_when_the_answer_was_cut(gateway, cli, tmp_path):  # type: ignore[no-untyped-def]
    sql = "SELECT screening_id FROM oncology.screenings"  # carl may fetch 100 rows
    code, out, err = cli("query", "--url", gateway.url, "--max-rows", "2", sql, user="carl")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == (
        "truncated: the answer stops at 100 rows, the most your role may fetch (max_rows); "
        "filter or aggregate, or ask the data owner for more")
    assert "… 98 more rows (100 in all;" in out
    target = tmp_path / "cut.csv"
    code, out, err = cli("query", "--url", gateway.url, "--output", str(target), sql,
                         user="carl")
    assert code == 0 and err.startswith("truncated: the answer stops at 100 rows")
    assert len(target.read_text().splitlines()) == 101  # header and 100 rows
    code, out, err = cli("query", "--url", gateway.url, sql + " LIMIT 100", user="carl")
    assert code == 0 and "truncated" not in out + err


ROWS = ("SELECT screening_id, site, screened_on, age, test, tumor_size_mm "
        "FROM oncology.screenings ORDER BY screening_id LIMIT 700")
AGGREGATES = ("SELECT site, count(*) AS n, sum(age) AS total_age, avg(tumor_size_mm) AS mean_size "
              "FROM oncology.screenings GROUP BY site ORDER BY site")


def _read(path: Path, fmt: str, schema: pa.Schema) -> list[dict[str, Any]]:
    """A written answer back as Python rows, in the direct answer's types."""
    if fmt == "parquet":
        table = pq.read_table(path)
        assert table.schema.equals(schema), (table.schema, schema)
        return list(table.to_pylist())
    if fmt == "csv":
        options = pa_csv.ConvertOptions(column_types={f.name: f.type for f in schema})
        return list(pa_csv.read_csv(path, convert_options=options).to_pylist())
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # JSON has no dates nor decimals: back into the direct answer's types through Arrow.
    columns = {f.name: pa.array([r[f.name] for r in rows]).cast(f.type) for f in schema}
    return list(pa.table(columns).to_pylist())


@pytest.mark.parametrize("sql", [ROWS, AGGREGATES], ids=["rows", "aggregates"])
@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_files_hold_the_same_answer_as_adbc(gateway, cli, tmp_path, sql, fmt):  # type: ignore[no-untyped-def]
    want = direct(gateway, "rita", sql)
    assert want.num_rows > 3 and want.column("site").null_count == 0
    path = tmp_path / f"answer.{fmt}"
    code, out, err = cli("query", "--url", gateway.url, "--format", fmt, "--output",
                         str(path), sql)
    assert (code, out) == (0, "")
    assert err == f"Wrote {want.num_rows} rows to {path}.\n"
    assert not list(tmp_path.glob("*.part"))
    assert _read(path, fmt, want.schema) == want.to_pylist()
    if fmt != "parquet":  # the same bytes on standard output
        code, out, _ = cli("query", "--url", gateway.url, "--format", fmt, sql)
        assert code == 0 and out == path.read_text()


def test_output_suffix_implies_the_format(gateway, cli, tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "regions.parquet"
    code, _, _ = cli("query", "--url", gateway.url, "-o", str(path), REGIONS)
    assert code == 0
    assert pq.read_table(path).to_pylist() == direct(gateway, "rita", REGIONS).to_pylist()


def _footer(out: str) -> list[str]:
    return out.split("\n\n", 1)[1].splitlines()


def test_dp_footer_accounts_exactly(gateway, cli, analyst):  # type: ignore[no-untyped-def]
    count = "SELECT count(*) AS n FROM oncology.screenings"
    run = {"user": analyst, "password": ANALYST_PASSWORD}
    code, out, err = cli("query", "--url", gateway.url, count, **run)
    assert (code, err) == (0, "")
    # ε 0.1 per query (the analyst role's epsilon_per_query); a count's sensitivity is
    # max_rows_per_unit = 5, so the Laplace scale is 5 / 0.1 = 50; a count is a whole
    # number, so its 95% half-width is the smallest whole k >= 50 · ln(20) - 1/2: 150.
    assert _footer(out) == [
        "privacy: ε spent 0.1, remaining 2.9; δ spent 0, remaining 1e-06",
        "column  mechanism  95% half-width",
        "n       laplace    ±150",
    ]
    noisy = int(out.splitlines()[2])
    assert abs(noisy - 20_000) < 25 * 50
    code, out, _ = cli("query", "--url", gateway.url, count + " WHERE age > 40", **run)
    assert _footer(out)[0] == "privacy: ε spent 0.1, remaining 2.8; δ spent 0, remaining 1e-06"
    # --epsilon changes the spend and the noise: scale 5 / 0.25 = 20, half-width
    # ceil(20 · ln(20) - 1/2) = 60.
    code, out, _ = cli("query", "--url", gateway.url, "--epsilon", "0.25",
                       count + " WHERE age > 50", **run)
    assert _footer(out) == [
        "privacy: ε spent 0.25, remaining 2.55; δ spent 0, remaining 1e-06",
        "column  mechanism  95% half-width",
        "n       laplace    ±60",
    ]
    # The same question again: the same answer, nothing spent.
    code, again, _ = cli("query", "--url", gateway.url, count, **run)
    assert _footer(again)[0] == ("privacy: the same answer as before, nothing spent; "
                                 "ε remaining 2.55, δ remaining 1e-06")
    assert gateway.domain.ledger.balance(analyst, "oncology").spent_epsilon == pytest.approx(
        0.45, abs=1e-12)


def test_dp_footer_goes_to_stderr_with_a_file_format(gateway, cli, analyst):  # type: ignore[no-untyped-def]
    sql = "SELECT site, count(*) AS n FROM oncology.screenings GROUP BY site ORDER BY site"
    code, out, err = cli("query", "--url", gateway.url, "--format", "csv", sql,
                         user=analyst, password=ANALYST_PASSWORD)
    assert code == 0
    assert out.splitlines()[0] == '"site","n"' and len(out.splitlines()) == 5
    spent = gateway.domain.ledger.balance(analyst, "oncology").spent_epsilon
    assert spent > 0
    assert err.splitlines()[0] == (f"privacy: ε spent {spent:.12g}, remaining "
                                   f"{3.0 - spent:.12g}; δ spent 1e-08, remaining 9.9e-07")
    assert err.splitlines()[2].startswith("n       laplace    ±")


def test_sql_errors_keep_line_and_column(gateway, cli):  # type: ignore[no-untyped-def]
    sql = "SELECT site,\n       agee\nFROM oncology.screenings"
    for extra in ((), ("--dialect", "postgres")):
        code, out, err = cli("query", "--url", gateway.url, *extra, sql)
        assert (code, out) == (2, "")
        assert err == ("error: Unknown column 'agee' in table 'screenings'. Did you mean "
                       "'age'? (line 2, column 8).\n")


def test_dialect_is_sent_with_the_query(gateway, cli):  # type: ignore[no-untyped-def]
    code, out, _ = cli("query", "--url", gateway.url, "--dialect", "tsql",
                       "SELECT TOP 2 code FROM registry.regions ORDER BY code")
    assert code == 0 and out.splitlines()[2:] == ["east", "north", "(2 rows)"]


def test_wrong_password_and_a_gateway_that_is_down(gateway, cli):  # type: ignore[no-untyped-def]
    code, out, err = cli("query", "--url", gateway.url, REGIONS, password="not-it")
    assert (code, out, err) == (2, "", "error: Wrong user name or password.\n")
    url = f"grpc://127.0.0.1:{free_port()}"
    for command in (("query", "--url", url, REGIONS), ("catalog", "--url", url),
                    ("budget", "mine", "--url", url)):
        code, out, err = cli(*command)
        assert code == 2 and out == ""
        assert err.startswith(f"error: Cannot reach the gateway at {url}: is it running? (")
        assert err.count("\n") == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--format", "parquet", REGIONS], "Parquet is binary: write it to a file with --output"),
    (["--output", "x.txt", REGIONS], "Which format for x.txt? Give --format csv, json or"),
    (["--format", "table", "--output", "x.csv", REGIONS], "--output writes csv, json or "),
    (["--file", "q.sql", REGIONS], "Give the query as an argument or with --file, not both."),
    ([], "No query: give it as an argument"),
    (["   "], "The query is empty."),
    (["--file", "/nonexistent/q.sql"], "Cannot read --file /nonexistent/q.sql:"),
    (["--epsilon", "0.2", "/* epsilon: 0.3 */ SELECT count(*) FROM oncology.screenings"],
     "The query's own /* epsilon: 0.3 */ comment and --epsilon both set the epsilon"),
    (["--epsilon", "lots", REGIONS], "--epsilon must be a number, e.g. 0.5, not 'lots'"),
    (["--dialect", "postgresql", REGIONS], "Unknown SQL dialect 'postgresql'. Did you mean "
                                           "'postgres'?"),
    (["--max-rows", "-1", REGIONS], "--max-rows must be 0 (all) or more, not -1."),
    (["SELECT * FROM secret.salaries"], "Table 'secret.salaries' not found"),
])
def test_usage_errors_are_one_line(gateway, cli, argv, message):  # type: ignore[no-untyped-def]
    code, out, err = cli("query", "--url", gateway.url, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: " + message) and err.count("\n") == 1, err


def test_query_and_password_from_standard_input(gateway, cli, monkeypatch, capsys, tmp_path):  # type: ignore[no-untyped-def]
    # The password is the first line, the query the rest.
    monkeypatch.setattr(sys, "stdin", Stdin(USERS["rita"][1] + "\nSELECT count(*) AS n\n"
                                            "FROM registry.regions\n"))
    assert main(["query", "--url", gateway.url, "--user", "rita", "--password-stdin", "-"]) == 0
    assert capsys.readouterr().out == "n\n-\n4\n(1 row)\n"
    code, out, _ = cli("query", "--url", gateway.url, "-", stdin=REGIONS)
    assert code == 0 and out.splitlines()[-1] == "(4 rows)"
    sql_file = tmp_path / "q.sql"
    sql_file.write_text(REGIONS)
    code, out2, _ = cli("query", "--url", gateway.url, "--file", str(sql_file))
    assert code == 0 and out2 == out


def test_in_a_real_process(gateway):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k not in ("STOCKADE_PASSWORD", "STOCKADE_USER")}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "query", "--url", gateway.url, "--user", "rita",
         "--format", "json", REGIONS], env={**env, "STOCKADE_PASSWORD": USERS["rita"][1]},
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert [json.loads(line) for line in proc.stdout.splitlines()] == direct(
        gateway, "rita", REGIONS).to_pylist()
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "query", "--url", gateway.url, "--user", "rita",
         REGIONS], env=env, input="", capture_output=True, text=True, cwd=ROOT, timeout=120,
        check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: No password to log in to ")


# ---------------------------------------------------------------------- catalog, budget

def test_catalog_shows_what_the_role_sees(gateway, cli):  # type: ignore[no-untyped-def]
    code, out, _ = cli("catalog", "--url", gateway.url, user="carl")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "oncology  (raw)  Cancer screening results  [tags: cancer, screening]"
    assert lines[1] == "  patients    sex string, birth_year int32, site string, consent bool"
    assert lines[2].startswith("  screenings  screening_id int64, site string, ")
    assert len(lines) == 3
    code, out, _ = cli("catalog", "--url", gateway.url, user="rita")
    patients = next(line for line in out.splitlines() if line.startswith("  patients"))
    assert "zip string" in patients and "patient_id" not in patients
    assert "registry  (raw)" in out and "secret" not in out
    code, out, _ = cli("catalog", "--url", gateway.url, "--format", "json", user="carl")
    with GatewayClient(gateway.url, "carl", USERS["carl"][1]) as client:
        assert json.loads(out) == client.action("stockade.catalog")
    [oncology] = json.loads(out)
    columns = {t["table"]: [c["name"] for c in t["columns"]] for t in oncology["tables"]}
    assert "zip" not in columns["patients"] and "patient_id" not in columns["patients"]


def test_budget_mine(gateway, cli, analyst):  # type: ignore[no-untyped-def]
    run = {"user": analyst, "password": ANALYST_PASSWORD}
    code, out, _ = cli("budget", "mine", "--url", gateway.url, **run)
    assert code == 0
    assert out.splitlines() == [
        "DATASET   ε ALLOWANCE  ε SPENT  ε LEFT  δ ALLOWANCE  δ SPENT  δ LEFT  NOTE",
        "oncology  3            0        3       1e-06        0        1e-06",
    ]
    cli("query", "--url", gateway.url, "SELECT count(*) FROM oncology.screenings", **run)
    code, out, _ = cli("budget", "mine", "--url", gateway.url, **run)
    assert out.splitlines()[1].split() == ["oncology", "3", "0.1", "2.9", "1e-06", "0",
                                           "1e-06"]
    code, out, _ = cli("budget", "mine", "--url", gateway.url, "--format", "json", user="ann")
    with GatewayClient(gateway.url, "ann", USERS["ann"][1]) as client:
        assert json.loads(out) == client.action("stockade.budget")
    assert [b["dataset"] for b in json.loads(out)] == ["oncology"]
    code, out, _ = cli("budget", "mine", "--url", gateway.url, user="rita")
    assert (code, out) == (0, f"'rita' reads no dataset in dp mode at {gateway.url}, so has "
                              "no budget there.\n")


def test_owner_budget_commands_are_unchanged(gateway, cli):  # type: ignore[no-untyped-def]
    code, out, _ = cli("budget", "show", "ann", "--url", gateway.url, "--format", "json",
                       user="owner")
    assert code == 0 and [b["user"] for b in json.loads(out)["budgets"]] == ["ann"]


def test_requests_budget_and_mine(gateway, cli, analyst):  # type: ignore[no-untyped-def]
    run = {"user": analyst, "password": ANALYST_PASSWORD}
    code, out, _ = cli("requests", "mine", "--url", gateway.url, **run)
    assert (code, out) == (0, "You have filed no requests.\n")
    code, out, _ = cli("requests", "budget", "oncology", "--epsilon", "1.5", "--reason",
                       "Quarterly report", "--url", gateway.url, "--format", "json", **run)
    request = json.loads(out)
    assert (request["user"], request["epsilon"], request["status"]) == (analyst, 1.5, "pending")
    code, out, _ = cli("requests", "access", "registry", "--mode", "aggregate", "--reason",
                       "Beds", "--url", gateway.url, **run)
    assert code == 0 and out.startswith("Filed request ")
    assert "(access, mode aggregate on 'registry')" in out
    code, out, _ = cli("requests", "mine", "--url", gateway.url, **run)
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["ID", "STATUS", "KIND", "DATASET", "ASKS"]
    assert lines[1].split()[:6] == [str(request["id"]), "pending", "budget", "oncology", "ε",
                                    "1.5"]
    assert lines[2].split()[1:6] == ["pending", "access", "registry", "mode", "aggregate"]


# ------------------------------------------------------------------------------------ TLS

@pytest.fixture(scope="module")
def tls_gateway(test_root: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from gateway.serving import start_server
    from gateway.settings import load_settings
    from tests.test_tls import _self_signed

    directory = tmp_path_factory.mktemp("cli_tls")
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


def test_tls_with_a_private_ca(tls_gateway, cli):  # type: ignore[no-untyped-def]
    url, cert = tls_gateway
    code, out, _ = cli("query", "--url", url, "--tls-ca", str(cert), REGIONS)
    assert code == 0 and out.splitlines()[-1] == "(4 rows)"
    code, out, _ = cli("catalog", "--url", url, "--tls-ca", str(cert))
    assert code == 0 and out.startswith("bulk  (raw)")
    code, out, err = cli("query", "--url", url, REGIONS)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: Cannot verify the TLS certificate of {url} (")
    assert err.endswith("): pass the CA that signed it with --tls-ca FILE.\n")
    code, out, err = cli("catalog", "--url", url)  # pyarrow's client does not say why
    assert code == 2 and err.count("\n") == 1
    assert err.endswith("If it is, and its certificate is signed by a private CA, pass that "
                        "CA with --tls-ca FILE.\n")


# -------------------------------------------------------------------------------- network

@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from network_fixtures import DOMAINS, start_domain, start_network

    root = tmp_path_factory.mktemp("cli_network")
    domains = {name: start_domain(root / name, name) for name in DOMAINS}
    server, url = start_network({name: d.url for name, d in domains.items()})
    yield url, domains
    server.shutdown()
    for d in domains.values():
        d.stop()


def test_federated_query_through_a_network(network, cli):  # type: ignore[no-untyped-def]
    from network_fixtures import USERS as NET_USERS
    from network_fixtures import ground_truth

    url, domains = network
    sql = "SELECT test, count(*) AS n, sum(age) AS s FROM {} GROUP BY test ORDER BY test"
    code, out, err = cli("query", "--url", url, "--format", "json",
                         sql.format("federated.oncology.screenings"), user="rita",
                         password=NET_USERS["rita"][1])
    assert code == 0
    assert err.splitlines()[:3] == ["federated: 3 of 3 domains answered", "domain        status",
                                    "st_marys      ok"]  # (the answer itself is on stdout)
    got = [(r["test"], r["n"], r["s"]) for r in map(json.loads, out.splitlines())]
    assert got == ground_truth([d.parquet for d in domains.values()], sql.format("screenings"))

    code, out, _ = cli("query", "--url", url, sql.format("federated.oncology.screenings"),
                       user="rita", password=NET_USERS["rita"][1])
    assert _footer(out) == [
        "federated: 3 of 3 domains answered",
        "domain        status",
        "st_marys      ok",
        "city_general  ok",
        "northern      ok",
    ]

    # ann reads every domain in dp mode: what the footer says each domain charged is what
    # `budget mine` then finds spent there (a fresh network: nothing else was spent).
    ann = {"user": "ann", "password": NET_USERS["ann"][1]}
    code, out, _ = cli("query", "--url", url, "--format", "csv",
                       "SELECT count(*) AS n FROM federated.oncology.screenings", **ann)
    code, budgets, _ = cli("budget", "mine", "--url", url, "--format", "json", **ann)
    assert code == 0
    spent = {b["domain"]: b["epsilon_spent"] for b in json.loads(budgets)}
    assert spent == {"st_marys": 0.5, "city_general": 0.4, "northern": 0.6}
    code, table, _ = cli("budget", "mine", "--url", url, **ann)
    assert table.splitlines()[1].split()[:5] == ["st_marys", "oncology", "20", "0.5", "19.5"]


def test_catalog_and_routed_dp_through_a_network(network, cli):  # type: ignore[no-untyped-def]
    from network_fixtures import USERS as NET_USERS

    url, _ = network
    ann = {"user": "ann", "password": NET_USERS["ann"][1]}
    code, out, _ = cli("catalog", "--url", url, **ann)
    assert code == 0
    heads = [line for line in out.splitlines() if not line.startswith(" ")]
    assert heads == ["city_general.oncology", "federated.oncology", "northern.oncology",
                     "st_marys.oncology"]
    assert "  screenings  screening_id bigint, site varchar, age integer" in out
    assert "patient_id" not in out
    code, out, _ = cli("query", "--url", url, "--epsilon", "0.2",
                       "SELECT count(*) AS n FROM city_general.oncology.screenings", **ann)
    assert code == 0
    assert _footer(out)[0].startswith("privacy: ε spent 0.2, remaining ")
    code, out, err = cli("requests", "mine", "--url", url, **ann)
    assert code == 2 and err.startswith(f"error: {url} is a network node: requests go to a "
                                        "domain.")
