"""The admin commands against a running gateway (``--url``): in-process and as real processes."""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.errors import AuthenticationError
from gateway.remote import GatewayClient
from tests.conftest import USERS

ROOT = Path(__file__).resolve().parents[1]
OWNER_PASSWORD = USERS["owner"][1]
NEW_PASSWORD = "new-user-password"


class Stdin(io.StringIO):
    """Standard input that is not a terminal (unless ``tty``)."""

    def __init__(self, text: str = "", *, tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STOCKADE_PASSWORD", "STOCKADE_USER", "STOCKADE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stdin", Stdin())


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``stockade ARGV`` in-process as the owner (password in the environment)."""

    def run(*argv: str, stdin: str = "", password: str | None = OWNER_PASSWORD
            ) -> tuple[int, str, str]:
        if password is None:
            monkeypatch.delenv("STOCKADE_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("STOCKADE_PASSWORD", password)
        monkeypatch.setattr(sys, "stdin", Stdin(stdin))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client(gateway, user: str, password: str) -> GatewayClient:  # type: ignore[no-untyped-def]
    return GatewayClient(gateway.url, user, password)


def oncology_budget(gateway, user: str, password: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with client(gateway, user, password) as me:
        (entry,) = [b for b in me.action("stockade.budget") if b["dataset"] == "oncology"]
    return dict(entry)


# ---------------------------------------------------------------- logging in


def test_wrong_password_is_one_error_line(gateway, cli):  # type: ignore[no-untyped-def]
    code, out, err = cli("users", "list", "--url", gateway.url, password="not-the-password")
    assert code == 2 and out == ""
    assert err.startswith("error: Wrong user name or password") and err.count("\n") == 1


def test_gateway_down_is_one_error_line(cli):  # type: ignore[no-untyped-def]
    url = f"grpc://127.0.0.1:{free_port()}"
    code, _, err = cli("requests", "list", "--url", url)
    assert code == 2
    assert err.startswith(f"error: Cannot reach the gateway at {url}") and err.count("\n") == 1


def test_a_non_owner_is_told_who_may(gateway, cli):  # type: ignore[no-untyped-def]
    code, _, err = cli("users", "list", "--url", gateway.url, "--user", "rita",
                       password=USERS["rita"][1])
    assert code == 2
    assert "Only the data owner (an admin role) may run stockade.users.list" in err


def test_login_user_from_the_environment(gateway, cli, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STOCKADE_USER", "ann")
    code, _, err = cli("requests", "list", "--url", gateway.url, password=USERS["ann"][1])
    assert code == 2 and "stockade.requests.list" in err  # logged in as ann, not owner


def test_password_from_stdin(gateway, cli):  # type: ignore[no-untyped-def]
    code, out, err = cli("users", "list", "--url", gateway.url, "--password-stdin",
                         "--format", "json", stdin=OWNER_PASSWORD + "\n", password=None)
    assert code == 0, err
    assert {"owner", "rita", "ann"} <= {u["name"] for u in json.loads(out)}


def test_password_stdin_wins_over_the_environment(gateway, cli):  # type: ignore[no-untyped-def]
    code, _, err = cli("users", "list", "--url", gateway.url, "--password-stdin",
                       stdin="wrong-password\n")
    assert code == 2 and "Wrong user name or password" in err


def test_no_password_and_no_terminal(gateway, cli):  # type: ignore[no-untyped-def]
    code, _, err = cli("users", "list", "--url", gateway.url, password=None)
    assert code == 2
    assert "No password to log in to" in err and "STOCKADE_PASSWORD" in err
    assert "--password-stdin" in err
    code, _, err = cli("users", "list", "--url", gateway.url, "--password-stdin",
                       password=None)
    assert code == 2 and "standard input is empty" in err


def test_password_prompt_on_a_terminal(gateway, cli, monkeypatch):  # type: ignore[no-untyped-def]
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return OWNER_PASSWORD

    monkeypatch.setattr("getpass.getpass", getpass)
    monkeypatch.delenv("STOCKADE_PASSWORD", raising=False)
    monkeypatch.setattr(sys, "stdin", Stdin(tty=True))
    assert main(["users", "list", "--url", gateway.url, "--format", "json"]) == 0
    assert prompts == [f"Password of owner at {gateway.url}: "]


@pytest.mark.parametrize(("argv", "message"), [
    (["users", "list", "--data-dir", "somewhere"], "not both"),
    (["budget", "show", "--data-dir", "somewhere"], "not both"),
    (["audit", "verify", "--data-dir", "somewhere"], "not both"),
    (["budget", "set", "ann", "oncology", "--epsilon", "1", "--policy", "p.yaml"],
     "--policy goes with --data-dir only"),
])
def test_url_and_data_dir_exclude_each_other(gateway, cli, argv, message):  # type: ignore[no-untyped-def]
    code, _, err = cli(*argv, "--url", gateway.url)
    assert code == 2 and message in err


@pytest.mark.parametrize("argv", [
    ["users", "list", "--user", "owner"],
    ["budget", "show", "--tls-ca", "ca.pem"],
    ["audit", "verify", "--password-stdin"],
])
def test_login_options_need_a_url(tmp_path, cli, argv):  # type: ignore[no-untyped-def]
    code, _, err = cli(*argv, "--data-dir", str(tmp_path))
    assert code == 2 and "give --url too" in err


def test_tls_ca_needs_a_tls_url(gateway, cli, tmp_path):  # type: ignore[no-untyped-def]
    code, _, err = cli("users", "list", "--url", gateway.url, "--tls-ca",
                       str(tmp_path / "ca.pem"))
    assert code == 2 and "grpc+tls://" in err


def test_remote_only_commands_need_a_url(cli):  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        cli("requests", "list")
    assert exc.value.code == 2


# ---------------------------------------------------------------- users


def test_create_a_user_then_list_it(gateway, cli):  # type: ignore[no-untyped-def]
    name = unique("cli_user")
    code, out, err = cli("users", "add", name, "--role", "clinician", "--attr", "site=north",
                         "--password-stdin", "--url", gateway.url, stdin=NEW_PASSWORD + "\n")
    assert code == 0, err
    assert out == f"Added user '{name}' with role 'clinician'.\n"
    code, out, _ = cli("users", "list", "--url", gateway.url)
    assert code == 0
    (line,) = [row for row in out.splitlines() if row.startswith(name)]
    assert line.split()[:3] == [name, "clinician", "active"] and 'site="north"' in line
    assert out.splitlines()[0].split() == ["NAME", "ROLE", "STATUS", "ATTRIBUTES", "CREATED"]
    with client(gateway, name, NEW_PASSWORD) as me:
        assert me.action("stockade.whoami")["attributes"] == {"site": "north"}


def test_add_refuses_what_the_gateway_refuses(gateway, cli):  # type: ignore[no-untyped-def]
    code, _, err = cli("users", "add", unique("cli_user"), "--role", "analyts",
                       "--password-stdin", "--url", gateway.url, stdin=NEW_PASSWORD + "\n")
    assert code == 2 and "Did you mean 'analyst'" in err


def test_change_a_user_by_url(gateway, cli):  # type: ignore[no-untyped-def]
    name = unique("cli_user")
    gateway.domain.store.add_user(name, "clinician", NEW_PASSWORD, {"site": "north"})
    url = ("--url", gateway.url)

    code, out, err = cli("users", "set-role", name, "researcher", *url)
    assert code == 0, err
    assert out == f"'{name}' now has role 'researcher'.\n"
    code, out, _ = cli("users", "set-attributes", name, "--attr", "site=south", "--attr",
                       "level=3", *url)
    assert code == 0 and out == f"'{name}' now has attributes: level=3, site=\"south\".\n"
    code, _, err = cli("users", "set-attributes", name, *url)
    assert code == 2 and "--clear" in err
    code, out, _ = cli("users", "set-attributes", name, "--clear", *url)
    assert code == 0 and "attributes: none" in out
    user = gateway.domain.store.get_user(name)
    assert (user.role, dict(user.attributes)) == ("researcher", {})

    code, out, _ = cli("users", "disable", name, *url)
    assert code == 0 and "Disabled" in out
    with pytest.raises(AuthenticationError):
        client(gateway, name, NEW_PASSWORD)
    code, out, _ = cli("users", "enable", name, *url)
    assert code == 0 and "Enabled" in out

    # The new password is --password-stdin; the owner's comes from the environment.
    code, out, err = cli("users", "passwd", name, "--password-stdin", *url,
                         stdin="another-password\n")
    assert code == 0, err
    assert "Changed the password" in out
    with client(gateway, name, "another-password") as me:
        assert me.action("stockade.whoami")["role"] == "researcher"
    code, _, err = cli("users", "passwd", name, "--password-stdin", *url,
                       stdin="another-password\n", password=None)
    assert code == 2 and "(--password-stdin is the new password here)" in err


def test_unknown_users_and_self_lockout(gateway, cli):  # type: ignore[no-untyped-def]
    code, _, err = cli("users", "passwd", "ritta", "--password-stdin", "--url", gateway.url,
                       stdin=NEW_PASSWORD + "\n")
    assert code == 2 and "Unknown user 'ritta'. Did you mean 'rita'?" in err
    code, _, err = cli("users", "disable", "owner", "--url", gateway.url)
    assert code == 2 and "cannot disable yourself" in err
    assert not gateway.domain.store.get_user("owner").disabled


def test_remove_by_url_points_to_disable(gateway, cli):  # type: ignore[no-untyped-def]
    code, _, err = cli("users", "remove", "rita", "--url", gateway.url)
    assert code == 2 and "stockade users disable rita --url" in err
    assert gateway.domain.store.get_user("rita")


def test_user_changes_by_data_dir(tmp_path, cli):  # type: ignore[no-untyped-def]
    from gateway.state import StateStore

    data = str(tmp_path / "state")
    with StateStore(data) as store:
        store.add_user("bea", "clinician", NEW_PASSWORD, {"site": "north"})
    assert cli("users", "set-role", "bea", "researcher", "--data-dir", data)[0] == 0
    assert cli("users", "set-attributes", "bea", "--attr", "site=east", "--data-dir",
               data)[0] == 0
    assert cli("users", "disable", "bea", "--data-dir", data)[0] == 0
    with StateStore(data) as store:
        user = store.get_user("bea")
    assert (user.role, dict(user.attributes), user.disabled) == ("researcher",
                                                                 {"site": "east"}, True)


# ---------------------------------------------------------------- budgets and requests


@pytest.fixture
def analyst(gateway) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = unique("cli_analyst")
    gateway.domain.store.add_user(name, "analyst", NEW_PASSWORD, {})
    yield name


def test_budget_set_add_show_by_url(gateway, cli, analyst):  # type: ignore[no-untyped-def]
    url = ("--url", gateway.url)
    code, out, err = cli("budget", "show", analyst, "--url", gateway.url, "--format", "json")
    assert code == 0, err
    (entry,) = json.loads(out)["budgets"]
    assert entry["dataset"] == "oncology" and entry["epsilon_allowance"] == pytest.approx(3.0)

    code, out, err = cli("budget", "add", analyst, "oncology", "--epsilon", "1.5", *url)
    assert code == 0, err
    assert f"Added to the budget of '{analyst}' on dataset 'oncology': allowance ε 4.5" in out
    code, out, _ = cli("budget", "set", analyst, "oncology", "--epsilon", "2", "--delta",
                       "2e-6", *url)
    assert code == 0 and "allowance ε 2, δ 2e-06" in out
    # Without --delta, set keeps the δ allowance.
    code, out, _ = cli("budget", "set", analyst, "oncology", "--epsilon", "5", *url)
    assert code == 0 and "allowance ε 5, δ 2e-06" in out
    assert oncology_budget(gateway, analyst, NEW_PASSWORD)["epsilon_allowance"] == 5

    code, out, _ = cli("budget", "show", analyst, *url)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:2] == ["USER", "DATASET"]
    assert row.split()[:5] == [analyst, "oncology", "5", "0", "5"]

    code, _, err = cli("budget", "set", analyst, "oncolgy", "--epsilon", "1", *url)
    assert code == 2 and "Did you mean 'oncology'" in err
    code, _, err = cli("budget", "add", analyst, "registry", "--epsilon", "1", *url)
    assert code == 0 and "warning:" in err and "dp mode" in err
    code, _, err = cli("budget", "charges", "--url", gateway.url)
    assert code == 2 and "--data-dir" in err


def test_approve_a_budget_request_by_cli(gateway, cli, analyst):  # type: ignore[no-untyped-def]
    with client(gateway, analyst, NEW_PASSWORD) as me:
        filed = me.action("stockade.request_budget",
                          {"dataset": "oncology", "epsilon": 2, "reason": "Annual report"})
    request_id = str(filed["id"])
    code, out, err = cli("requests", "list", "--status", "pending", "--url", gateway.url)
    assert code == 0, err
    (line,) = [row for row in out.splitlines() if row.split()[0] == request_id]
    assert analyst in line and "ε 2" in line and "Annual report" in line

    code, out, err = cli("requests", "approve", request_id, "--epsilon", "1.25", "--reason",
                         "half for now", "--url", gateway.url)
    assert code == 0, err
    assert f"Approved request {request_id} of '{analyst}'" in out
    assert "allowance ε 4.25" in out
    assert oncology_budget(gateway, analyst, NEW_PASSWORD)["epsilon_allowance"] == 4.25

    code, _, err = cli("requests", "approve", request_id, "--url", gateway.url)
    assert code == 2 and "already approved" in err
    assert oncology_budget(gateway, analyst, NEW_PASSWORD)["epsilon_allowance"] == 4.25
    code, out, _ = cli("requests", "list", "--format", "json", "--url", gateway.url)
    (mine,) = [r for r in json.loads(out) if r["id"] == filed["id"]]
    assert mine["status"] == "approved" and mine["decision_reason"] == "half for now"


def test_deny_needs_a_reason(gateway, cli, analyst, capsys):  # type: ignore[no-untyped-def]
    with client(gateway, analyst, NEW_PASSWORD) as me:
        filed = me.action("stockade.request_access",
                          {"dataset": "registry", "mode": "raw", "reason": "linkage"})
    with pytest.raises(SystemExit) as exc:
        cli("requests", "deny", str(filed["id"]), "--url", gateway.url)
    assert exc.value.code == 2 and "--reason" in capsys.readouterr().err
    code, out, err = cli("requests", "deny", str(filed["id"]), "--reason", "not this year",
                         "--url", gateway.url)
    assert code == 0, err
    assert out.strip().endswith(": not this year")
    with client(gateway, analyst, NEW_PASSWORD) as me:
        (mine,) = me.action("stockade.my_requests")
    assert (mine["status"], mine["decision_reason"]) == ("denied", "not this year")
    code, _, err = cli("requests", "approve", "nine", "--url", gateway.url)
    assert code == 2 and "request's number" in err


# ---------------------------------------------------------------- audit


def test_audit_show_and_verify_by_url(gateway, cli, connect):  # type: ignore[no-untyped-def]
    conn = connect("rita")
    for sql in ("SELECT code FROM registry.regions", "SELECT label FROM registry.codes"):
        cur = conn.cursor()
        cur.execute(sql)
        cur.fetch_arrow_table()
        cur.close()
    code, out, err = cli("audit", "verify", "--url", gateway.url)
    assert code == 0, err
    assert out.strip().endswith("records, chain intact")

    code, out, err = cli("audit", "show", "--url", gateway.url, "--user", "rita", "--kind",
                         "query", "--limit", "2", "--format", "json")
    assert code == 0, err
    records = json.loads(out)
    assert len(records) == 2 and {r["user"] for r in records} == {"rita"}
    assert records[0]["id"] < records[1]["id"]
    assert records[-1]["sql"] == "SELECT label FROM registry.codes"
    code, out, _ = cli("audit", "show", "--url", gateway.url, "--user", "rita", "--limit", "1")
    assert code == 0 and "registry.codes:raw" in out and "rows=5" in out
    code, out, _ = cli("audit", "show", "--url", gateway.url, "--user", "rita", "--limit",
                       "1", "--format", "csv")
    assert code == 0 and out.splitlines()[1].split(",")[2:4] == ["query", "rita"]
    code, out, _ = cli("audit", "show", "--url", gateway.url, "--since", "2999-01-01")
    assert code == 0 and out == "No audit records.\n"
    code, _, err = cli("audit", "show", "--url", gateway.url, "--since", "yesterday")
    assert code == 2 and "--since" in err


# ---------------------------------------------------------------- real processes


def stockade(*argv: str, env: dict[str, str] | None = None, stdin: str = ""
             ) -> subprocess.CompletedProcess[str]:
    """The ``stockade`` entry point (``gateway.cli:main``) in a process of its own."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("STOCKADE_PASSWORD", "STOCKADE_USER", "STOCKADE_DATA_DIR")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *argv], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**clean, **(env or {})}, check=False)


def test_in_real_processes(gateway):  # type: ignore[no-untyped-def]
    proc = stockade("users", "list", "--url", gateway.url, "--format", "json",
                    env={"STOCKADE_PASSWORD": OWNER_PASSWORD})
    assert proc.returncode == 0, proc.stderr
    assert "rita" in {u["name"] for u in json.loads(proc.stdout)}

    proc = stockade("audit", "verify", "--url", gateway.url, "--password-stdin",
                    stdin=OWNER_PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    assert "chain intact" in proc.stdout

    proc = stockade("requests", "list", "--url", gateway.url, stdin="wrong-password\n",
                    env={"STOCKADE_PASSWORD": "wrong-password"})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: Wrong user name or password")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- a gateway of our own


@pytest.fixture(scope="module")
def own(test_root: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A TLS gateway over the test data with its own policy file and state."""
    from gateway.serving import start_server
    from gateway.settings import load_settings
    from tests.test_tls import _self_signed

    directory = tmp_path_factory.mktemp("own")
    (directory / "data").symlink_to(test_root / "data")
    (directory / "policy.yaml").write_text((test_root / "policy.yaml").read_text())
    cert, key = _self_signed(directory)
    settings = load_settings({"policy": str(directory / "policy.yaml"),
                              "data_dir": str(directory / "state"), "port": 0,
                              "memory_limit": "1GB", "tls_cert": str(cert),
                              "tls_key": str(key)}, env={})
    os.environ.pop("STOCKADE_ADMIN_PASSWORD", None)
    server, domain, url, password = start_server(settings)
    assert password
    yield url, str(cert), password, domain, directory
    server.shutdown()
    domain.close()


def test_tls_gateway_with_a_ca(own, cli):  # type: ignore[no-untyped-def]
    url, cert, password, _, _ = own
    code, out, err = cli("users", "list", "--url", url, "--tls-ca", cert, password=password)
    assert code == 0, err
    assert out.splitlines()[1].startswith("owner")
    code, _, err = cli("users", "list", "--url", url, password=password)
    assert code == 2 and err.startswith("error: ")
    code, _, err = cli("users", "list", "--url", url, "--tls-ca", cert + ".missing",
                       password=password)
    assert code == 2 and "Cannot read --tls-ca" in err


def test_budget_cap_by_url(own, cli):  # type: ignore[no-untyped-def]
    url, cert, password, domain, _ = own
    target = ("--url", url, "--tls-ca", cert)
    code, out, err = cli("budget", "cap", "oncology", "--epsilon", "20", "--delta", "1e-5",
                         *target, password=password)
    assert code == 0, err
    assert out.startswith("Capped dataset 'oncology' for all users at ε 20, δ 1e-05")
    assert domain.ledger.dataset_caps()["oncology"][:2] == (20.0, 1e-5)
    domain.store.add_user("capped", "analyst", NEW_PASSWORD, {})
    code, out, _ = cli("budget", "show", "capped", *target, password=password)
    assert code == 0 and "DATASET CAP (ALL USERS)" in out
    assert out.splitlines()[-1].split()[:3] == ["oncology", "20", "0"]
    code, _, err = cli("budget", "cap", "oncology", *target, password=password)
    assert code == 2 and "--remove" in err
    code, out, _ = cli("budget", "cap", "oncology", "--remove", *target, password=password)
    assert code == 0 and out.startswith("Removed the cap of dataset 'oncology'")
    assert "oncology" not in domain.ledger.dataset_caps()


def test_live_policy_by_url(own, cli, tmp_path):  # type: ignore[no-untyped-def]
    url, cert, password, domain, directory = own
    target = ("--url", url, "--tls-ca", cert)
    original = (directory / "policy.yaml").read_text()
    code, out, err = cli("policy", "get", *target, password=password)
    assert code == 0, err
    assert out == original
    code, out, _ = cli("policy", "versions", *target, "--format", "json", password=password)
    assert code == 0 and [(v["version"], v["live"]) for v in json.loads(out)] == [(1, True)]

    bad = tmp_path / "bad.yaml"
    bad.write_text(original.replace("{mode: aggregate, min_group_size: 10}",
                                    "{mode: aggregat, min_group_size: 10}"))
    line = bad.read_text().splitlines().index(
        "      oncology: {mode: aggregat, min_group_size: 10}") + 1
    code, out, err = cli("policy", "validate", str(bad), *target, password=password)
    assert code == 2 and out == ""
    assert f"error: {bad}:{line}: " in err and "Did you mean 'aggregate'?" in err
    code, _, err = cli("policy", "replace", str(bad), *target, password=password)
    assert code == 2 and "aggregat" in err

    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(original.replace("min_group_size: 10", "min_group_size: 20"))
    code, out, err = cli("policy", "validate", str(stricter), "--diff", *target,
                         password=password)
    assert code == 0, err
    assert out.startswith(f"{stricter}: valid; 1 change(s) from the live policy:\n")
    assert "+      oncology: {mode: aggregate, min_group_size: 20}" in out
    code, _, err = cli("policy", "replace", str(stricter), "--expected-version", "7",
                       *target, password=password)
    assert code == 2 and "the live policy is version 1" in err
    assert domain.policy_version == 1
    code, out, err = cli("policy", "replace", str(stricter), "--comment", "bigger groups",
                         "--expected-version", "1", *target, password=password)
    assert code == 0, err
    assert out.splitlines()[0] == "Policy version 2 is live (was version 1); 1 change(s):"
    code, out, _ = cli("policy", "versions", *target, password=password)
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["2", "live"]
    assert out.splitlines()[1].endswith("bigger groups")
    code, out, _ = cli("policy", "get", "--version", "1", *target, password=password)
    assert code == 0 and out == original


def test_dry_run_by_url(own, cli):  # type: ignore[no-untyped-def]
    url, cert, password, domain, _ = own
    target = ("--url", url, "--tls-ca", cert)
    domain.store.add_user("dry_ann", "analyst", NEW_PASSWORD, {})
    code, out, err = cli("policy", "dry-run", "SELECT COUNT(*) AS n FROM oncology.screenings",
                         "--as", "dry_ann", *target, password=password)
    assert code == 0, err
    assert "decision: allowed" in out and "table oncology.screenings: dp" in out
    assert "cost: ε 0.1" in out
    assert domain.ledger.balance("dry_ann", "oncology").spent_epsilon == 0
    code, out, err = cli("policy", "dry-run", "SELECT * FROM secret.salaries", "--as",
                         "dry_ann", "--format", "json", *target, password=password)
    assert code == 2
    result = json.loads(out)
    assert result["decision"] == "refused" and result["error"]


def test_audit_verify_fails_after_tampering(own, cli):  # type: ignore[no-untyped-def]
    url, cert, password, domain, _ = own
    target = ("--url", url, "--tls-ca", cert)
    for name in ("tamper_a", "tamper_b", "tamper_c"):
        domain.audit.login_failure(name, "unknown_user")
    code, out, err = cli("audit", "verify", *target, password=password)
    assert code == 0, err
    victim = [r for r in domain.audit.records() if r.user == "tamper_b"][0].id
    con = sqlite3.connect(domain.store.path)
    con.execute("DROP TRIGGER audit_log_append_only_update")
    con.execute("UPDATE audit_log SET user_name = 'someone_else' WHERE id = ?", (victim,))
    con.commit()
    con.close()
    code, out, err = cli("audit", "verify", *target, password=password)
    assert code == 1 and out == ""
    assert err == (f"error: audit chain broken at record {victim}: "
                   "its content does not match its hash\n")
