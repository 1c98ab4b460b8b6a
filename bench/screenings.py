"""Synthetic patients and screenings for the policy overhead and federation parts.

The benchmarks use the tests' stable sample data (not the demo's, which may change),
so that their figures stay comparable from run to run, under a policy of their own.
"""

from __future__ import annotations

from tests.sample_domain import generate

__all__ = ["POLICY", "generate"]

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
