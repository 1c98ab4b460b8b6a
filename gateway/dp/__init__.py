"""Differential privacy for ``dp`` mode, over the gateway's engine.

- :mod:`gateway.dp.translate` checks a query against what ``dp`` mode supports
  and compiles it into the policy relation, noisy measurements and a release;
- :mod:`gateway.dp.aggregate` writes the exact measurements as one aggregate
  query (rows bounded per privacy unit, values clamped);
- :mod:`gateway.dp.mechanisms` memoises the noise-scale search of SmartNoise's
  Laplace mechanism (OpenDP's samplers);
- :mod:`gateway.dp.release` adds the noise and post-processes it totally
  (censoring, rounding, order by key, outputs, HAVING, ORDER BY, intervals);
- :mod:`gateway.dp.queries` plans, prices, charges, then reads
  (:class:`PrivateQueries`), with :mod:`gateway.ledger` for budgets.
"""

from gateway.dp.queries import DEFAULT_DELTA, DpPlan, PrivateQueries, odometer_cost
from gateway.dp.translate import DpQueryError

__all__ = ["DEFAULT_DELTA", "DpPlan", "DpQueryError", "PrivateQueries", "odometer_cost"]
