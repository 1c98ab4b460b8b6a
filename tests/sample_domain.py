"""A small sample domain for tests and screenshots: patients and screenings of one
hospital under a policy with every mode (the first demo's data, kept stable so that
tests do not depend on what ``stockade demo`` generates)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

DEMO_POLICY = """\
# Sample policy of St Mary's (tests).
version: 1
domain: {name: st_marys, description: "St Mary's research domain (demo data)"}
datasets:
  oncology:
    description: Cancer screening results 2019-2024 (synthetic)
    tags: [cancer, screening, demo]
    tables:
      patients:
        description: One row per patient
        source: {format: parquet, path: data/patients.parquet}
        privacy_unit: patient_id
        row_filter: "consent"
        columns:
          patient_id: {hidden: true}
          zip: {mask: "left(zip, 3) || '**'"}
      screenings:
        description: One row per screening
        source: {format: parquet, path: data/screenings.parquet}
        privacy_unit: patient_id
        max_rows_per_unit: 5
        columns:
          patient_id: {hidden: true}
          age: {lower: 0, upper: 110}
roles:
  researcher:
    datasets:
      oncology: {mode: raw}
  clinician:
    datasets:
      oncology:
        mode: raw
        row_filter: "site = {user.site}"
        tables: {patients: {hidden: [zip]}}
  analyst:
    datasets:
      oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3.0, delta: 1.0e-6}}
  owner: {admin: true}
"""


DEMO_USERS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("owner", "owner", "owner-demo-pw", {}),
    ("rita", "researcher", "rita-demo-pw", {}),
    ("carl", "clinician", "carl-demo-pw", {"site": "north"}),
    ("ann", "analyst", "ann-demo-pw", {}),
)


@dataclass(frozen=True)
class Population:
    """How a demo domain's synthetic patients and screenings are drawn."""

    seed: float = 0.42
    sites: tuple[str, ...] = ("north", "south", "east", "west")
    first_birth_year: int = 1930
    birth_years: int = 80
    consent_rate: float = 0.9
    positive_rate: float = 0.07


#: City General's patients: other sites, born later, more positives, fewer consents.
CITY_GENERAL_POPULATION = Population(seed=0.17, sites=("central", "harbour", "hills"),
                                     first_birth_year=1940, birth_years=65,
                                     consent_rate=0.8, positive_rate=0.11)


def generate(directory: Path, rows: int, population: Population | None = None) -> None:
    """Write patients.parquet and screenings.parquet with ``rows`` screenings."""
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    patients = max(rows // 4, 10)
    p = population or Population()
    sites = "[" + ", ".join(f"'{site}'" for site in p.sites) + "]"
    con = duckdb.connect()
    con.execute(f"SELECT setseed({p.seed})")
    con.execute(f"""
        COPY (
          SELECT range AS patient_id,
                 CASE WHEN random() < 0.5 THEN 'F' ELSE 'M' END AS sex,
                 {p.first_birth_year} + CAST(floor(random() * {p.birth_years}) AS INTEGER)
                   AS birth_year,
                 lpad(CAST(10000 + CAST(floor(random() * 89999) AS INTEGER) AS VARCHAR), 5, '0')
                   AS zip,
                 {sites}[1 + (range % {len(p.sites)})] AS site,
                 random() < {p.consent_rate} AS consent
          FROM range({patients})
        ) TO '{data / "patients.parquet"}' (FORMAT parquet)
    """)
    con.execute(f"""
        COPY (
          SELECT s.range AS screening_id,
                 p.patient_id, p.site,
                 DATE '2019-01-01' + CAST(floor(random() * 2190) AS INTEGER) AS screened_on,
                 2024 - p.birth_year AS age,
                 ['mammography', 'colonoscopy', 'psa', 'cervical'][1 + (s.range % 4)] AS test,
                 CASE WHEN random() < {p.positive_rate} THEN 'positive' ELSE 'negative' END
                   AS result,
                 round(CASE WHEN random() < {p.positive_rate} THEN 5 + random() * 40 END, 1)
                   AS tumor_size_mm
          FROM range({rows}) s
          JOIN '{data / "patients.parquet"}' p ON p.patient_id = s.range % {patients}
        ) TO '{data / "screenings.parquet"}' (FORMAT parquet)
    """)
    con.close()

