"""Synthetic patients and screenings for the policy overhead and federation parts.

The benchmarks use the tests' stable sample data (not the demo's, which may change),
so that their figures stay comparable from run to run, under a policy of their own.
"""

from __future__ import annotations

from tests.sample_domain import DEMO_POLICY, generate

__all__ = ["POLICY", "generate"]

POLICY = DEMO_POLICY.replace(
    """domain: {name: st_marys, description: "St Mary's research domain (demo data)"}""",
    """domain: {name: screenings_bench, description: "synthetic screenings (benchmark)"}""")
assert POLICY != DEMO_POLICY
