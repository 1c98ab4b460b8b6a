"""`stockade budget …`: in-process through `gateway.cli.main`, and one real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway.cli import main
from gateway.ledger import Cost, Ledger
from gateway.state import StateStore
from policy.model import Budget

ROOT = Path(__file__).resolve().parents[1]

POLICY = """\
version: 1
domain: {name: d}
datasets:
  health:
    budget_cap: {epsilon: 10, delta: 1.0e-4}
    tables:
      visits:
        source: {format: csv, path: visits.csv}
        privacy_unit: pid
  sales:
    tables:
      orders: {source: {format: csv, path: orders.csv}, privacy_unit: pid}
roles:
  analyst:
    datasets:
      health: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3, delta: 1.0e-5}}
  clerk:
    datasets:
      sales: {mode: raw}
"""


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_DATA_DIR", raising=False)


@pytest.fixture
def data(tmp_path: Path) -> str:
    """A state store with alice and bob (analysts) and carol (clerk); alice spent 0.5."""
    data_dir = tmp_path / "data"
    with StateStore(data_dir, hasher=PasswordHasher(memory_cost=8192)) as store:
        store.add_user("alice", "analyst", "password-1")
        store.add_user("bob", "analyst", "password-2")
        store.add_user("carol", "clerk", "password-3")
        ledger = Ledger(store)
        for cost in (Cost(0.1), Cost(0.3, 1e-6), Cost(0.1)):
            ledger.charge("alice", "health", cost, default=Budget(3.0, 1e-5))
    return str(data_dir)


@pytest.fixture
def policy(tmp_path: Path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["budget", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def show_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, list[dict[str, object]]]:
    code, out, err = run(capsys, "show", "--format", "json", *argv)
    assert (code, err) == (0, "")
    result: dict[str, list[dict[str, object]]] = json.loads(out)
    return result


def test_show_lists_stored_budgets(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "show", "--data-dir", data)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["USER", "DATASET"]
    assert lines[1].split() == ["alice", "health", "3", "0.5", "2.5", "1e-05", "1e-06", "9e-06"]
    assert "bob" not in out  # never queried, and no policy to know his role's budget


def test_show_json_has_every_amount(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    found = show_json(capsys, "alice", "--data-dir", data)
    assert found == {"budgets": [{
        "user": "alice", "dataset": "health",
        "epsilon_allowance": 3.0, "epsilon_spent": 0.5, "epsilon_remaining": 2.5,
        "delta_allowance": 1e-5, "delta_spent": 1e-6, "delta_remaining": 9e-6,
        "source": "ledger",
    }], "dataset_caps": []}


def test_show_with_policy_adds_role_defaults(
    data: str, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    budgets = show_json(capsys, "--data-dir", data, "--policy", policy)["budgets"]
    assert [(b["user"], b["dataset"], b["source"]) for b in budgets] == [
        ("alice", "health", "ledger"), ("bob", "health", "role default"),
    ]  # carol's role reads no dataset in dp mode
    bob = budgets[1]
    assert (bob["epsilon_allowance"], bob["epsilon_remaining"], bob["delta_allowance"]) == (
        3.0, 3.0, 1e-5)
    code, out, _ = run(capsys, "show", "bob", "--data-dir", data, "--policy", policy)
    assert code == 0 and "role default (no dp query yet)" in out


def test_show_filters_and_hints(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "bob", "--data-dir", data)
    assert code == 0
    assert "No budgets for 'bob' yet." in out and "--policy FILE" in out
    code, out, err = run(capsys, "show", "--dataset", "helth", "--data-dir", data)
    assert code == 2 and out == ""
    assert "No budget records for dataset 'helth'. Did you mean 'health'?" in err


def test_show_includes_the_dataset_cap(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    with StateStore(data) as store:
        Ledger(store).set_dataset_cap("health", 0.8, 1e-4)
    found = show_json(capsys, "--data-dir", data)
    assert found["dataset_caps"] == [{
        "dataset": "health", "epsilon": 0.8, "delta": 1e-4, "epsilon_spent": 0.5,
        "delta_spent": 1e-6, "epsilon_remaining": 0.3, "delta_remaining": 9.9e-5,
    }]
    assert found["budgets"][0]["epsilon_remaining"] == 0.3
    code, out, _ = run(capsys, "show", "--data-dir", data)
    assert code == 0 and "limited by the dataset cap" in out and "DATASET CAP" in out


def test_set_replaces_the_allowance_and_keeps_delta(
    data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "set", "alice", "health", "--epsilon", "5", "--data-dir", data)
    assert (code, err) == (0, "")
    assert "allowance ε 5, δ 1e-05" in out and "left ε 4.5, δ 9e-06" in out
    code, out, _ = run(capsys, "set", "ALICE", "health", "--epsilon", "0.2", "--delta", "0",
                       "--data-dir", data)
    assert code == 0 and "nothing is left" in out
    with StateStore(data) as store:
        b = Ledger(store).balance("alice", "health")
    assert (b.allowance_epsilon, b.allowance_delta, b.remaining_epsilon) == (0.2, 0.0, 0.0)


def test_set_for_a_user_who_never_queried(
    data: str, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "set", "bob", "health", "--epsilon", "1", "--data-dir", data)
    assert code == 2 and "no δ to keep" in err and "--policy FILE" in err
    code, out, err = run(capsys, "set", "bob", "health", "--epsilon", "1", "--data-dir", data,
                         "--policy", policy)
    assert (code, err) == (0, "") and "allowance ε 1, δ 1e-05" in out


def test_add_adds_to_the_stored_allowance(
    data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "add", "alice", "health", "--epsilon", "0.5", "--delta", "1e-6",
                         "--data-dir", data)
    assert (code, err) == (0, "")
    assert "allowance ε 3.5, δ 1.1e-05" in out
    assert "left ε 3, δ 1e-05" in out


def test_add_starts_from_the_roles_budget(
    data: str, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "add", "bob", "health", "--epsilon", "1", "--data-dir", data)
    assert code == 2 and "no allowance for dataset 'health' yet" in err
    code, out, err = run(capsys, "add", "bob", "health", "--epsilon", "1", "--data-dir", data,
                         "--policy", policy)
    assert (code, err) == (0, "") and "allowance ε 4, δ 1e-05" in out


def test_a_dataset_the_role_does_not_read_in_dp_warns(
    data: str, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "set", "carol", "sales", "--epsilon", "1", "--data-dir", data,
                       "--policy", policy)
    assert code == 0
    assert "warning: role 'clerk' of 'carol' does not read 'sales' in dp mode" in err
    code, _, err = run(capsys, "set", "carol", "salse", "--epsilon", "1", "--data-dir", data,
                       "--policy", policy)
    assert code == 2 and "Unknown dataset 'salse'" in err and "Did you mean 'sales'?" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["set", "alcie", "health", "--epsilon", "1"],
         "Unknown user 'alcie'. Did you mean 'alice'?"),
        (["charges", "alcie"], "Unknown user 'alcie'. Did you mean 'alice'?"),
        (["show", "alcie"], "Unknown user 'alcie'. Did you mean 'alice'?"),
        (["set", "alice", "health", "--epsilon", "-1"], "--epsilon must be a number ≥ 0, not -1"),
        (["add", "alice", "health", "--epsilon", "1", "--delta", "-1e-6"],
         "--delta must be a number ≥ 0, not -1e-6"),
        (["add", "alice", "health", "--epsilon", "nan"], "--epsilon must be a number ≥ 0"),
        (["add", "alice", "health", "--epsilon", "lots"], "--epsilon must be a number, e.g. 0.5"),
        (["set", "alice", "health", "--epsilon", "1", "--delta", "1"],
         "--delta must be below 1"),
        (["set", "alice", "helth", "--epsilon", "1"], "Did you mean 'health'?"),
    ],
)
def test_errors_exit_2_with_one_line(
    data: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv, "--data-dir", data)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    with StateStore(data) as store:  # nothing changed
        assert Ledger(store).balance("alice", "health").allowance_epsilon == 3.0


def test_a_missing_data_dir_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "show")
    assert code == 2 and "No data directory" in err
    code, _, err = run(capsys, "show", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 2 and "No Stockade state" in err


def test_a_broken_policy_is_an_error(
    data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("epsilon_per_query: 0.1", "epsilon_per_querry: 0.1"))
    code, _, err = run(capsys, "show", "--data-dir", data, "--policy", str(bad))
    assert code == 2 and "Did you mean 'epsilon_per_query'?" in err


def test_charges_are_listed_oldest_first(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "charges", "--data-dir", data)
    assert (code, err) == (0, "")
    rows = out.splitlines()
    assert [r.split()[1:] for r in rows[1:4]] == [
        ["alice", "health", "0.1", "0"],
        ["alice", "health", "0.3", "1e-06"],
        ["alice", "health", "0.1", "0"],
    ]
    assert rows[4] == "3 charge(s): ε 0.5, δ 1e-06 in total."
    code, out, _ = run(capsys, "charges", "ALICE", "--dataset", "health", "--format", "json",
                       "--data-dir", data)
    records = json.loads(out)
    assert code == 0 and [r["epsilon"] for r in records] == [0.1, 0.3, 0.1]
    assert set(records[0]) == {"user", "dataset", "epsilon", "delta", "charged_at"}
    assert records[0]["charged_at"].endswith("+00:00")
    code, out, _ = run(capsys, "charges", "bob", "--data-dir", data)
    assert code == 0 and out == "No charges yet.\n"


def test_a_real_process(data: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "budget", "add", "alice", "health",
         "--epsilon", "0.5", "--data-dir", data],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "allowance ε 3.5" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "budget", "set", "nobody", "health",
         "--epsilon", "1", "--data-dir", data],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: Unknown user 'nobody'")
    assert "Traceback" not in proc.stderr
