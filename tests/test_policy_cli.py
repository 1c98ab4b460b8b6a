"""`stockade policy check` and `stockade policy explain` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway.cli import main
from gateway.state import StateStore
from tests.conftest import TEST_POLICY, USERS

STOCKADE = [sys.executable, "-m", "gateway.cli"]
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def stockade(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run([*STOCKADE, *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state store holding the test users (the engine is never built here)."""
    path = tmp_path_factory.mktemp("policy-cli-state")
    with StateStore(path, hasher=FAST) as store:
        for name, (role, password, attributes) in USERS.items():
            store.add_user(name, role, password, attributes)
    return path


def variant(test_root: Path, tmp_path: Path, old: str, new: str) -> Path:
    """The test policy with ``old`` replaced by ``new``, next to the test data."""
    assert old in TEST_POLICY
    path = tmp_path / "policy.yaml"
    path.write_text(TEST_POLICY.replace(old, new))
    (tmp_path / "data").symlink_to(test_root / "data")
    return path


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# -- check ------------------------------------------------------------------------------


def test_check_good_policy_with_users(test_root, data_dir):
    proc = stockade("policy", "check", str(test_root / "policy.yaml"), "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "st_marys" in proc.stdout and "5 user(s)" in proc.stdout
    assert proc.stderr == ""


def test_check_typo_has_line_and_suggestion(test_root, tmp_path):
    bad = variant(test_root, tmp_path, "zip: {mask:", "zipp: {mask:")
    proc = stockade("policy", "check", str(bad))
    assert proc.returncode == 2
    line = line_of(bad, "zipp:")
    assert f"error: {bad}:{line}: " in proc.stderr
    assert "zipp" in proc.stderr and "Did you mean 'zip'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_filter_that_does_not_bind_on_duckdb(test_root, tmp_path):
    bad = variant(test_root, tmp_path, 'row_filter: "site = {user.site}"',
                  'row_filter: "year(site) = 2020 AND site = {user.site}"')
    proc = stockade("policy", "check", str(bad))
    assert proc.returncode == 2, proc.stdout
    line = line_of(bad, "year(site)")
    assert f"error: {bad}:{line}: roles.clinician.datasets.oncology.row_filter" in proc.stderr
    assert "'clinician'" in proc.stderr and "year(VARCHAR)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_mask_and_filter_type_errors(test_root, tmp_path):
    bad = variant(test_root, tmp_path, "zip: {mask: \"left(zip, 3) || '**'\"}",
                  "zip: {mask: \"year(zip)\"}")
    proc = stockade("policy", "check", str(bad))
    assert proc.returncode == 2
    line = line_of(bad, "year(zip)")
    assert f"{bad}:{line}: datasets.oncology.tables.patients.columns.zip.mask" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_reports_users_missing_an_attribute(test_root, tmp_path):
    with StateStore(tmp_path / "state", hasher=FAST) as store:
        store.add_user("dora", "clinician", "dora-password-1", {})
        store.add_user("ghost", "nurse", "ghost-password-1", {})
    proc = stockade("policy", "check", str(test_root / "policy.yaml"),
                    "--data-dir", str(tmp_path / "state"))
    assert proc.returncode == 2
    assert "'dora'" in proc.stderr and "no attribute 'site'" in proc.stderr
    assert "warning: user 'ghost' has role 'nurse'" in proc.stderr


def test_check_needs_an_existing_state_store(test_root, tmp_path, capsys):
    code = main(["policy", "check", str(test_root / "policy.yaml"),
                 "--data-dir", str(tmp_path / "nowhere")])
    assert code == 2 and "No Stockade state store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


# -- explain ----------------------------------------------------------------------------


def explain(test_root: Path, data_dir: Path, user: str, sql: str, *extra: str):  # type: ignore[no-untyped-def]
    return stockade("policy", "explain", "--policy", str(test_root / "policy.yaml"),
                    "--data-dir", str(data_dir), "--user", user, *extra, sql)


def test_explain_for_carl_binds_his_site(test_root, data_dir):
    proc = explain(test_root, data_dir, "carl",
                   "SELECT p.sex, count(*) AS n FROM oncology.patients p "
                   "JOIN oncology.screenings s USING (site) GROUP BY p.sex")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "user: carl" in out and "role: clinician (attributes: site='north')" in out
    assert "table oncology.patients: raw" in out and "table oncology.screenings: raw" in out
    assert "row filters: (consent) AND (site = 'north')" in out
    assert "hidden columns: patient_id, zip" in out
    assert "limits: at most 100 rows" in out
    sql = out.split("rewritten SQL:\n", 1)[1]
    assert "'north'" in sql and "LIMIT 100" in sql and "\n" in sql.strip()  # pretty-printed


def test_explain_for_rita_shows_masks_and_json(test_root, data_dir):
    proc = explain(test_root, data_dir, "rita", "SELECT zip, sex FROM oncology.patients",
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["role"] == "researcher" and got["dialect"] == "duckdb"
    [table] = got["tables"]
    assert table == {"dataset": "oncology", "table": "patients", "mode": "raw",
                     "row_filters": ["consent"], "hidden": ["patient_id"],
                     "masks": {"zip": "left(zip, 3) || '**'"}, "min_group_size": None}
    assert "LEFT(" in got["sql"] and "north" not in got["sql"]


def test_explain_in_another_dialect(test_root, data_dir):
    proc = explain(test_root, data_dir, "carl", "SELECT TOP 3 site FROM oncology.screenings",
                   "--dialect", "tsql")
    assert proc.returncode == 0, proc.stderr
    assert "dialect: tsql" in proc.stdout and "LIMIT 3" in proc.stdout


def test_explain_refused_query_exits_2(test_root, data_dir):
    proc = explain(test_root, data_dir, "carl", "SELECT zip FROM oncology.patients")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Unknown column 'zip'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    ("user", "sql", "message"),
    [
        ("rita", "SELECT name FROM secret.salaries", "not found"),
        ("rita", "SELECT * FROM read_csv('/etc/passwd')", "error:"),
        ("rita", "/* dialect: postgress */ SELECT 1", "Did you mean 'postgres'?"),
        ("nobody", "SELECT 1", "nobody"),
    ],
)
def test_explain_refusals_in_process(test_root, data_dir, capsys, user, sql, message):
    code = main(["policy", "explain", "--policy", str(test_root / "policy.yaml"),
                 "--data-dir", str(data_dir), "--user", user, sql])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err


def test_explain_and_check_never_show_a_secret(test_root, tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("ZIP_SALT", "pepper-s3cret")
    policy = variant(test_root, tmp_path, "zip: {mask: \"left(zip, 3) || '**'\"}",
                     "zip: {mask: \"md5(zip || {secret.salt})\"}")
    text = policy.read_text()
    assert 'secrets: {salt: {"$env": STOCKADE_TEST_SALT}}' in text
    policy.write_text(text.replace('secrets: {salt: {"$env": STOCKADE_TEST_SALT}}',
                                   'secrets: {salt: {"$env": ZIP_SALT}}'))
    assert main(["policy", "check", str(policy), "--data-dir", str(data_dir)]) == 0
    for fmt in ("text", "json"):
        code = main(["policy", "explain", "--policy", str(policy), "--data-dir", str(data_dir),
                     "--user", "rita", "--format", fmt, "SELECT zip FROM oncology.patients"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "{secret.salt}" in out and "pepper" not in out + err


# -- explain in dp mode -------------------------------------------------------------------

DP_GROUPED = "SELECT site, count(*) AS n, avg(age) AS a FROM oncology.screenings GROUP BY site"


def ledger_rows(data_dir: Path) -> dict[str, list[tuple[object, ...]]]:
    """Everything the ledger keeps: allowances, charges and stored answers."""
    import sqlite3

    from gateway.state import STATE_FILE

    con = sqlite3.connect(data_dir / STATE_FILE)
    try:
        return {table: con.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("budget_allowances", "budget_charges", "dp_answers")}
    finally:
        con.close()


@pytest.fixture
def dp_state(tmp_path: Path) -> Path:
    """A state store with the analyst 'ann' and nothing spent."""
    path = tmp_path / "dp-state"
    with StateStore(path, hasher=FAST) as store:
        role, password, attributes = USERS["ann"]
        store.add_user("ann", role, password, attributes)
    return path


def test_explain_dp_query_json_shows_decision_cost_and_budget(
        test_root, dp_state, gateway, capsys):
    from gateway.ledger import Ledger
    from policy.principal import Principal

    with StateStore(dp_state, hasher=FAST) as store:
        Ledger(store).set_allowance("ann", "oncology", 0.3, 1e-6)
    before = ledger_rows(dp_state)
    code = main(["policy", "explain", "--policy", str(test_root / "policy.yaml"),
                 "--data-dir", str(dp_state), "--user", "ann", "--format", "json", DP_GROUPED])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)
    assert got["tables"] == [{
        "dataset": "oncology", "table": "screenings", "mode": "dp", "row_filters": [],
        "hidden": ["patient_id"], "masks": {}, "min_group_size": None,
        "privacy_unit": "patient_id", "max_rows_per_unit": 5,
        "bounds": {"age": {"lower": 0.0, "upper": 110.0}},
    }]
    dp = got["dp"]
    # A noisy key count, the count, and AVG's sum and count: four mechanisms at ε 0.1.
    assert dp["epsilon_per_query"] == 0.1 and dp["delta_per_query"] == 1e-8
    assert dp["cost"] == {"epsilon": pytest.approx(0.4, abs=1e-12), "delta": 1e-8}
    expected = gateway.domain.dp_cost(Principal("someone", "analyst"), DP_GROUPED)
    assert dp["cost"]["epsilon"] == expected["epsilon"]
    assert dp["cost"]["delta"] == expected["delta"]
    assert dp["budget"] == {"epsilon_allowance": 0.3, "epsilon_spent": 0.0,
                            "epsilon_remaining": 0.3, "delta_allowance": 1e-6,
                            "delta_spent": 0.0, "delta_remaining": 1e-6}
    assert dp["answered_before"] is False and dp["affordable"] is False
    assert [c["column"] for c in dp["columns"]] == ["n", "a"]
    assert dp["columns"][1]["derived"] is True
    assert all(w > s > 0 for c in dp["columns"]
               for s, w in zip(c["scale"], c["ci95_half_width"], strict=True))
    assert "dp.rel" in dp["aggregate_sql"] and "GROUP BY" in dp["aggregate_sql"]
    assert '"oncology"."screenings"' in got["sql"]
    assert ledger_rows(dp_state) == before


def test_explain_dp_query_text_with_epsilon_option(test_root, dp_state):
    sql = "SELECT count(*) AS n FROM oncology.patients WHERE sex = 'F'"
    proc = explain(test_root, dp_state, "ann", sql, "--epsilon", "0.25")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "role: analyst" in out and "table oncology.patients: dp" in out
    assert "privacy unit: patient_id (at most 1 row(s) per unit)" in out
    assert "row filters: (consent)" in out and "hidden columns: patient_id" in out
    assert "zip: left(zip, 3) || '**'" in out
    assert "dp: ε 0.25 and δ 0 per mechanism" in out
    assert "cost: ε 0.25, δ 0 (explain charges nothing)" in out
    assert "budget: ε 3 of 3 left (0 spent), δ 1e-06 of 1e-06 left" in out
    # scale 1/ε; a count is a whole number: the smallest whole half-width covering 95 %
    # (ceil(scale·ln 20 - 1/2) = 12), with its exact coverage 1 - exp(-12.5/4)
    assert "n: laplace, scale 4, ±12 (a whole number: covers 95.6%)" in out
    assert "Aggregate query" in out and "COUNT(*) AS m_count FROM" in out and "dp.rel" in out
    relation = out.split("relation dp.rel (the table under the policy):\n", 1)[1]
    assert "consent" in relation and "'F'" in relation
    # A comment in the query wins over the option.
    proc = explain(test_root, dp_state, "ann", "/* epsilon: 0.5 */ " + sql, "--epsilon", "0.25")
    assert proc.returncode == 0, proc.stderr
    assert "cost: ε 0.5, δ 0" in proc.stdout
    assert ledger_rows(dp_state) == {"budget_allowances": [], "budget_charges": [],
                                     "dp_answers": []}


@pytest.mark.parametrize(
    ("sql", "extra", "message"),
    [
        ("SELECT * FROM oncology.screenings", (), "aggregates only"),
        ("SELECT count(*) FROM oncology.screenings", ("--epsilon", "-1"), "positive number"),
        ("SELECT sum(tumor_size_mm) FROM oncology.screenings", (), "bounds"),
    ],
)
def test_explain_dp_refusals(test_root, dp_state, capsys, sql, extra, message):
    code = main(["policy", "explain", "--policy", str(test_root / "policy.yaml"),
                 "--data-dir", str(dp_state), "--user", "ann", *extra, sql])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err, err


def test_explain_after_a_paid_answer_shows_the_free_repeat(test_root, dp_state):
    from gateway.policy_tools import explain as explain_query
    from gateway.policy_tools import open_domain

    sql = "SELECT count(*) AS n FROM oncology.screenings WHERE age > 40"
    with open_domain(test_root / "policy.yaml", dp_state) as domain:
        first = explain_query(domain, "ann", sql)
        assert first.dp is not None and not first.dp.answered_before
        assert first.dp.charge == (first.dp.cost_epsilon, 0.0) and first.dp.affordable
        assert ledger_rows(dp_state)["budget_charges"] == []
        plan = domain.dp_plan(domain.principal_for(domain.store.get_user("ann")), sql)
        assert plan is not None
        domain.dp.execute(plan)  # pays
        again = explain_query(domain, "ann", sql)
        assert again.dp is not None and again.dp.answered_before
        assert again.dp.charge == (0.0, 0.0)
        assert again.dp.spent_epsilon == first.dp.cost_epsilon
        assert again.dp.remaining_epsilon == pytest.approx(3.0 - first.dp.cost_epsilon)
        assert "answered before" in again.to_text()
        other = explain_query(domain, "ann", sql, epsilon=0.2)  # another ε: a new query
        assert other.dp is not None and not other.dp.answered_before
        assert other.dp.cost_epsilon == pytest.approx(2 * first.dp.cost_epsilon)
    assert len(ledger_rows(dp_state)["budget_charges"]) == 1
