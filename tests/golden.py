"""Golden-file cases for the policy rules, and the small DuckDB they run on.

A file ``tests/fixtures/rewrites/<rule>.sql`` holds cases focused on one rule
(the whole pipeline runs, so each expected SQL is what the engine would get)::

    # title: what the case shows
    # principal: clinician site=north      (role, then user attributes)
    # execute: true                        (also run on DuckDB ...)
    # rows: SELECT ... FROM raw tables     (... and compare with these rows)
    SELECT * FROM screenings;              (input)
    SELECT ...;                            (expected, compared after normalising)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import sqlglot

from policy.loader import load_policy
from policy.model import Policy
from policy.principal import Principal

FIXTURES = Path(__file__).parent / "fixtures"
REWRITES = FIXTURES / "rewrites"
POLICY_FILE = FIXTURES / "policies" / "hospital.yaml"

SCHEMAS: dict[tuple[str, str], dict[str, str]] = {
    ("oncology", "screenings"): {
        "patient_id": "INTEGER",
        "ssn": "VARCHAR",
        "site": "VARCHAR",
        "age": "INTEGER",
        "zip": "VARCHAR",
        "consent": "BOOLEAN",
        "result": "VARCHAR",
    },
    ("oncology", "patients"): {
        "patient_id": "INTEGER",
        "ssn": "VARCHAR",
        "name": "VARCHAR",
        "site": "VARCHAR",
    },
    ("billing", "invoices"): {"id": "INTEGER", "patient_id": "INTEGER", "amount": "DOUBLE"},
    ("billing", "rates"): {"code": "VARCHAR", "price": "DOUBLE"},
    ("vault", "notes"): {"id": "INTEGER", "text": "VARCHAR"},
    ("registry", "people"): {
        "pid": "INTEGER",
        "name": "VARCHAR",
        "zip": "VARCHAR",
        "birth_year": "INTEGER",
    },
    ("registry", "visits"): {"pid": "INTEGER", "zip": "VARCHAR", "cost": "DOUBLE"},
}

DATA_SQL = """
CREATE SCHEMA oncology; CREATE SCHEMA billing; CREATE SCHEMA vault;
CREATE TABLE oncology.screenings AS SELECT * FROM (VALUES
  (1, '111-11-1111', 'north', 34, '10001', TRUE, 'neg'),
  (2, '222-22-2222', 'north', 51, '10002', FALSE, 'pos'),
  (3, '333-33-3333', 'south', 67, '20003', TRUE, 'pos'),
  (4, '444-44-4444', 'south', 45, '20004', TRUE, 'neg'),
  (5, '555-55-5555', 'o''hara', 29, '30005', TRUE, 'neg')
) AS v(patient_id, ssn, site, age, zip, consent, result);
CREATE TABLE oncology.patients AS SELECT * FROM (VALUES
  (1, '111-11-1111', 'Ann', 'north'),
  (2, '222-22-2222', 'Bob', 'north'),
  (3, '333-33-3333', 'Cid', 'south'),
  (4, '444-44-4444', 'Dee', 'south'),
  (5, '555-55-5555', 'Eve', 'o''hara')
) AS v(patient_id, ssn, name, site);
CREATE TABLE billing.invoices AS SELECT * FROM (VALUES
  (10, 1, 100.0), (11, 3, 250.5), (12, 4, 75.25)
) AS v(id, patient_id, amount);
CREATE TABLE billing.rates AS SELECT * FROM (VALUES ('A', 1.5)) AS v(code, price);
CREATE TABLE vault.notes AS SELECT * FROM (VALUES (1, 'top secret')) AS v(id, text);
CREATE SCHEMA registry;
CREATE TABLE registry.people AS SELECT * FROM (VALUES
  (1, 'Ann', '10001', 1980), (2, 'Bob', '10002', 1975), (3, 'Cid', '20003', 1990)
) AS v(pid, name, zip, birth_year);
CREATE TABLE registry.visits AS SELECT * FROM (VALUES
  (1, '10001', 20.0), (1, '10001', 35.5), (3, '20003', 12.25), (4, '10002', 8.0)
) AS v(pid, zip, cost);
"""


def hospital_policy() -> Policy:
    return load_policy(POLICY_FILE)


def make_duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the raw test tables as ``"dataset"."table"``."""
    con = duckdb.connect(":memory:")
    con.execute(DATA_SQL)
    return con


def principal_from(spec: str) -> Principal:
    """``"clinician site=north age=3"`` → Principal(role clinician, attributes)."""
    role, *pairs = spec.split()
    attributes: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        attributes[key] = int(value) if value.isdigit() else value
    return Principal(user=role, role=role, attributes=attributes)


@dataclass
class GoldenCase:
    file: str
    title: str
    input: str
    expected: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.title}"

    @property
    def principal(self) -> Principal:
        return principal_from(self.headers.get("principal", "researcher"))

    @property
    def execute(self) -> bool:
        return self.headers.get("execute", "false").lower() == "true"


_HEADER = re.compile(r"^#\s*(\w+):\s*(.*)$")


def load_cases(path: Path) -> list[GoldenCase]:
    """Read the input/expected pairs of one golden file."""
    cases: list[GoldenCase] = []
    headers: dict[str, str] = {}
    statements: list[str] = []
    buffer: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        header = _HEADER.match(line.strip())
        if header and not buffer:
            if statements:
                raise ValueError(f"{path}: header inside a case: {line!r}")
            headers[header.group(1)] = header.group(2).strip()
            continue
        if not line.strip() and not buffer:
            continue
        buffer.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(buffer).rstrip().rstrip(";").strip())
            buffer = []
            if len(statements) == 2:
                cases.append(
                    GoldenCase(
                        file=path.stem,
                        title=headers.get("title", f"case {len(cases) + 1}"),
                        input=statements[0],
                        expected=statements[1],
                        headers=headers,
                    )
                )
                headers, statements = {}, []
    if buffer or statements:
        raise ValueError(f"{path}: unterminated case at the end of the file")
    return cases


def all_cases() -> list[GoldenCase]:
    return [case for path in sorted(REWRITES.glob("*.sql")) for case in load_cases(path)]


def normalise(sql: str) -> str:
    """One canonical spelling of a DuckDB query, identifiers quoted."""
    return sqlglot.transpile(sql, read="duckdb", write="duckdb", identify=True)[0]
