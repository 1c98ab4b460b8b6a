"""policy.loader: the YAML contract and its validation messages."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from policy.loader import load_policy, parse_policy
from policy.model import Budget, Limits

ROOT = Path(__file__).parent.parent

ISSUE_YAML = textwrap.dedent(
    """\
    version: 1
    domain: {name: st_marys, description: "St Mary's research domain"}
    datasets:
      oncology:                       # a Flight SQL schema
        description: Cancer screening results 2019-2024
        tags: [cancer, screening]
        tables:
          screenings:
            source: {format: parquet, path: data/screenings.parquet}
            privacy_unit: patient_id  # the column that identifies one person
            max_rows_per_unit: 5
            row_filter: "consent"      # applies to every role
            columns:
              patient_id: {hidden: true}
              age: {lower: 0, upper: 110}
              zip: {mask: "left(zip, 3) || '**'"}
    roles:
      analyst:
        datasets:
          oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3.0, delta: 1.0e-6}}
      auditor:
        datasets:
          oncology: {mode: aggregate, min_group_size: 10}
      clinician:
        datasets:
          oncology:
            mode: raw
            row_filter: "site = {user.site}"
            tables: {screenings: {hidden: [zip]}}
      owner: {admin: true}
    """
)


def parse(text: str) -> object:
    return parse_policy(text, filename="p.yaml", base_dir="/srv/policies")


def test_the_contract_from_the_issue_loads() -> None:
    p = parse_policy(ISSUE_YAML, filename="p.yaml", base_dir="/srv/policies")
    assert p.domain.name == "st_marys"
    table = p.datasets["oncology"].tables["screenings"]
    assert table.source.path == "/srv/policies/data/screenings.parquet"
    assert table.columns["patient_id"].hidden
    assert table.columns["zip"].mask == "left(zip, 3) || '**'"
    assert table.columns["age"].upper == 110
    assert p.roles["analyst"].datasets["oncology"].budget is not None
    assert p.roles["clinician"].datasets["oncology"].tables["screenings"].hidden == ("zip",)
    assert p.roles["owner"].admin
    assert p.limits == Limits()


def test_example_file_loads() -> None:
    p = load_policy(ROOT / "policies.example.yaml")
    assert p.limits_for("clinician") == Limits(max_rows=10000, timeout_s=30.0)
    assert p.limits_for("analyst") == Limits(max_rows=1000000, timeout_s=60.0)


def replace(old: str, new: str) -> str:
    assert old in ISSUE_YAML
    return ISSUE_YAML.replace(old, new, 1)


@pytest.mark.parametrize(
    "text,message",
    [
        (
            replace("mode: raw", "mode: rwa"),
            "p.yaml:27: roles.clinician.datasets.oncology.mode: Unknown mode 'rwa'. "
            "Did you mean 'raw'?",
        ),
        (
            replace("roles:", "rolse:"),
            "p.yaml:17: rolse: Unknown key 'rolse'. Did you mean 'roles'?",
        ),
        (
            replace("privacy_unit: patient_id", "privacy_unti: patient_id"),
            "p.yaml:10: datasets.oncology.tables.screenings.privacy_unti: Unknown key "
            "'privacy_unti'. Did you mean 'privacy_unit'?",
        ),
        (
            replace("      oncology: {mode: aggregate", "      oncolgy: {mode: aggregate"),
            "p.yaml:23: roles.auditor.datasets.oncolgy: Unknown dataset 'oncolgy'. "
            "Did you mean 'oncology'?",
        ),
        (
            replace("tables: {screenings: {hidden", "tables: {screening: {hidden"),
            "Unknown table 'screening' in dataset 'oncology'. Did you mean 'screenings'?",
        ),
        (
            replace("format: parquet", "format: parqet"),
            "Unknown source format 'parqet'. Did you mean 'parquet'?",
        ),
        (replace("max_rows_per_unit: 5", "max_rows_per_unit: five"), "Expected a whole number"),
        (replace("{hidden: true}", "{hidden: yes please}"), "Expected true or false"),
        (replace("version: 1", "version: 2"), "Unsupported policy version 2"),
        (replace("min_group_size: 10", "min_group_size: 0"), "Expected a number >= 1"),
        (replace(", min_group_size: 10", ""), "'aggregate' mode on 'oncology.screenings' needs"),
        (replace("budget: {epsilon: 3.0, delta: 1.0e-6}", "budget: {epsilon: -1}"), "> 0"),
        (replace("budget: {epsilon: 3.0, delta: 1.0e-6}", "budget: {epsilon: 1.0e+7}"),
         "epsilon must be at most 1e+06"),
        (replace('row_filter: "consent"', 'row_filter: "consent AND ("'), "Invalid SQL"),
        (replace('row_filter: "consent"', "row_filter: \"getenv('x') = 1\""), "'getenv' is not"),
        (replace('row_filter: "consent"', "row_filter: \"site = '{user.site}'\""), "not be quoted"),
        (replace('row_filter: "consent"', 'row_filter: "x IN (SELECT 1)"'), "Subqueries"),
        (replace('row_filter: "consent"', 'row_filter: "site = {usr.site}"'), "Malformed"),
        (replace("tags: [cancer, screening]", "tags: cancer"), "Expected a list"),
        (replace("owner: {admin: true}", "owner: {admin: true}\n  owner: {}"), "Duplicate key"),
        (
            replace("  oncology:                       # a Flight SQL schema", "  1oncology:"),
            "not a valid name",
        ),
        ("version: 1\ndomain: {name: d}\n", "Missing required key 'datasets'"),
        ("", "The policy file is empty"),
        ("version: [1\n", "Not valid YAML"),
    ],
)
def test_validation_messages(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse(text)


def test_privacy_unit_needed_for_aggregate() -> None:
    text = replace(
        "        privacy_unit: patient_id  # the column that identifies one person\n", ""
    )
    with pytest.raises(PolicyError, match="has no privacy_unit"):
        parse(text)


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        domain: {name: d}
        datasets:
          db:
            tables:
              t: {source: {format: postgres, dsn: {"$env": STOCKADE_TEST_DSN}, table: t}}
        """
    )
    monkeypatch.delenv("STOCKADE_TEST_DSN", raising=False)
    with pytest.raises(PolicyError, match="STOCKADE_TEST_DSN is not set") as err:
        parse(text)
    assert err.value.line == 6
    monkeypatch.setenv("STOCKADE_TEST_DSN", "postgresql://x")
    p = parse_policy(text, base_dir="/")
    assert p.datasets["db"].tables["t"].source.dsn == "postgresql://x"


def test_load_policy_resolves_paths_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(ISSUE_YAML)
    p = load_policy(tmp_path / "p.yaml")
    path = p.datasets["oncology"].tables["screenings"].source.path
    assert path == str(tmp_path.resolve() / "data" / "screenings.parquet")
    assert p.file == str(tmp_path / "p.yaml")


def test_missing_file() -> None:
    with pytest.raises(PolicyError, match="Cannot read the policy file"):
        load_policy("/nonexistent/p.yaml")


def test_case_collisions_are_refused() -> None:
    text = replace(
        "      screenings:\n",
        "      Screenings:\n        source: {format: csv, path: x}\n      screenings:\n",
    )
    with pytest.raises(PolicyError, match="differ only by case"):
        parse(text)


def test_per_role_limits() -> None:
    text = replace("owner: {admin: true}", "owner: {admin: true, limits: {max_rows: 5}}")
    text = "limits: {timeout_s: 10}\n" + text
    p = parse_policy(text, base_dir="/")
    assert p.limits_for("owner") == Limits(max_rows=5, timeout_s=10.0)
    assert p.limits_for("unknown") == Limits(max_rows=1000000, timeout_s=10.0)


DP_GRANT = "oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3.0, delta: 1.0e-6}}"


def dp_grant(extra: str) -> str:
    return replace(DP_GRANT, DP_GRANT.replace("epsilon_per_query: 0.1", extra))


def test_epsilon_bounds_and_budget_cap_load() -> None:
    text = dp_grant("epsilon_per_query: 0.1, min_epsilon_per_query: 0.01, "
                    "max_epsilon_per_query: 1")
    text = text.replace("    tags: [cancer, screening]\n",
                        "    tags: [cancer, screening]\n"
                        "    budget_cap: {epsilon: 20, delta: 1.0e-5}\n")
    p = parse_policy(text, base_dir="/")
    grant = p.roles["analyst"].datasets["oncology"]
    assert (grant.min_epsilon_per_query, grant.max_epsilon_per_query) == (0.01, 1.0)
    assert grant.epsilon_bounds == (0.01, 1.0)
    assert p.datasets["oncology"].budget_cap == Budget(20.0, 1e-5)
    unbounded = parse_policy(ISSUE_YAML, base_dir="/")
    assert unbounded.roles["analyst"].datasets["oncology"].epsilon_bounds == (None, None)
    assert unbounded.datasets["oncology"].budget_cap is None


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            "epsilon_per_query: 0.1, max_epsilon_per_querry: 1",
            "roles.analyst.datasets.oncology.max_epsilon_per_querry: Unknown key "
            "'max_epsilon_per_querry'. Did you mean 'max_epsilon_per_query'?",
        ),
        (
            "epsilon_per_query: 0.1, min_epsilon_per_qeury: 0.01",
            "Did you mean 'min_epsilon_per_query'?",
        ),
        (
            "epsilon_per_query: 2, max_epsilon_per_query: 1",
            "p.yaml:20: roles.analyst.datasets.oncology.epsilon_per_query: "
            "epsilon_per_query (2) is above max_epsilon_per_query (1); "
            "the default ε must be one an analyst may choose",
        ),
        (
            "epsilon_per_query: 0.001, min_epsilon_per_query: 0.01",
            "epsilon_per_query (0.001) is below min_epsilon_per_query (0.01)",
        ),
        (
            "epsilon_per_query: 0.1, min_epsilon_per_query: 0.5, max_epsilon_per_query: 0.2",
            "min_epsilon_per_query (0.5) is greater than max_epsilon_per_query (0.2)",
        ),
        ("epsilon_per_query: 0.1, max_epsilon_per_query: 0", "Expected a number > 0, got 0"),
        ("epsilon_per_query: 0.1, min_epsilon_per_query: -1", "Expected a number > 0, got -1"),
        ("epsilon_per_query: 0.1, max_epsilon_per_query: lots", "Expected a number, got str"),
        ("epsilon_per_query: 0.1, max_epsilon_per_query: .inf", "Expected a finite number"),
    ],
)
def test_epsilon_bound_messages(extra: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse(dp_grant(extra))


@pytest.mark.parametrize(
    "cap,message",
    [
        ("{epsilon: 0}", "Expected a number > 0, got 0"),
        ("{epsilon: 5, delta: 1}", "delta must be below 1"),
        ("{epsilon: 5, detla: 1.0e-6}", "Unknown key 'detla'. Did you mean 'delta'?"),
        ("{delta: 1.0e-6}", "Missing required key 'epsilon'"),
    ],
)
def test_budget_cap_messages(cap: str, message: str) -> None:
    text = replace("    tags: [cancer, screening]\n",
                   f"    tags: [cancer, screening]\n    budget_cap: {cap}\n")
    with pytest.raises(PolicyError, match=re.escape(message)) as info:
        parse(text)
    assert "datasets.oncology.budget_cap" in str(info.value)


def test_budget_cap_typo_is_suggested() -> None:
    text = replace("    tags: [cancer, screening]\n",
                   "    tags: [cancer, screening]\n    budget_capp: {epsilon: 5}\n")
    with pytest.raises(PolicyError, match=re.escape("Did you mean 'budget_cap'?")):
        parse(text)


def _with_keys(keys: str) -> str:
    line = next(x for x in ISSUE_YAML.splitlines() if 'row_filter: "consent"' in x)
    indent = line[: len(line) - len(line.lstrip())]
    with_keys = ISSUE_YAML.replace(line, f"{line}\n{indent}public_keys: {keys}")
    assert with_keys != ISSUE_YAML
    return with_keys


def test_public_keys_load_from_the_policy_and_from_a_file(tmp_path: Path) -> None:
    p = parse_policy(_with_keys("{site: [north, south], year: [2023, 2024]}"), base_dir="/")
    table = p.datasets["oncology"].tables["screenings"]
    assert dict(table.public_keys) == {"site": ("north", "south"), "year": (2023, 2024)}
    (tmp_path / "sites.txt").write_text("north\nsouth\n\neast\n")
    p = parse_policy(_with_keys("{site: {file: sites.txt}}"), base_dir=str(tmp_path))
    assert p.datasets["oncology"].tables["screenings"].public_keys["site"] == (
        "north", "south", "east")


@pytest.mark.parametrize(("keys", "message"), [
    ("{site: []}", "public_keys of 'site' is a non-empty list"),
    ("{site: [a, a]}", "public_keys of 'site' lists a value twice"),
    ("{site: [a, 1]}", "mixes kinds of values"),
    ("{site: [[a]]}", "holds plain values"),
    ("{site: {file: missing.txt}}", "Cannot read the public keys file"),
    ("{site: {path: x}}", "Unknown key 'path'"),
])
def test_public_keys_messages(keys: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_policy(_with_keys(keys), filename="p.yaml", base_dir=str(tmp_path))
