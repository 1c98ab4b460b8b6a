"""Synthetic patients and screenings for the policy overhead and federation parts.

The benchmarks keep their own generator and policy, so that their figures stay
comparable from run to run while the demo's data and policies change.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

POLICY = """\
version: 1
domain: {name: screenings_bench, description: "synthetic screenings (benchmark)"}
datasets:
  oncology:
    description: Cancer screening results 2019-2024 (synthetic)
    tags: [cancer, screening]
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
  analyst:
    datasets:
      oncology: {mode: dp, epsilon_per_query: 0.1, budget: {epsilon: 3.0, delta: 1.0e-6}}
  owner: {admin: true}
"""


def generate(directory: Path, rows: int) -> None:
    """Write ``directory``/data/patients.parquet and screenings.parquet (``rows`` screenings,
    a quarter as many patients over four sites)."""
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    patients = max(rows // 4, 10)
    con = duckdb.connect()
    con.execute("SELECT setseed(0.42)")
    con.execute(f"""
        COPY (
          SELECT range AS patient_id,
                 CASE WHEN random() < 0.5 THEN 'F' ELSE 'M' END AS sex,
                 1930 + CAST(floor(random() * 80) AS INTEGER) AS birth_year,
                 lpad(CAST(10000 + CAST(floor(random() * 89999) AS INTEGER) AS VARCHAR), 5, '0')
                   AS zip,
                 ['north', 'south', 'east', 'west'][1 + (range % 4)] AS site,
                 random() < 0.9 AS consent
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
                 CASE WHEN random() < 0.07 THEN 'positive' ELSE 'negative' END AS result,
                 round(CASE WHEN random() < 0.07 THEN 5 + random() * 40 END, 1)
                   AS tumor_size_mm
          FROM range({rows}) s
          JOIN '{data / "patients.parquet"}' p ON p.patient_id = s.range % {patients}
        ) TO '{data / "screenings.parquet"}' (FORMAT parquet)
    """)
    con.close()
