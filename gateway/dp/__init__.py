"""Differential privacy for ``dp`` mode: SmartNoise SQL over the gateway's DuckDB.

- :mod:`gateway.dp.translate` checks a query against what ``dp`` mode supports
  and splits it into the policy relation and SmartNoise's query;
- :mod:`gateway.dp.metadata` builds SmartNoise metadata from the policy;
- :mod:`gateway.dp.reader` runs SmartNoise's SQL on DuckDB (relation
  substitution, sampling DuckDB accepts, a cheaper key count);
- :mod:`gateway.dp.mechanisms` memoises SmartNoise's noise-scale search;
- rows per privacy unit are bounded by SmartNoise's sampling in the query, or by
  the engine's bounded snapshot of the table (:mod:`gateway.snapshots`);
- :mod:`gateway.dp.queries` plans, prices, runs and charges
  (:class:`PrivateQueries`), with :mod:`gateway.ledger` for budgets.
"""

from gateway.dp.queries import DEFAULT_DELTA, DpPlan, PrivateQueries, odometer_cost
from gateway.dp.translate import DpQueryError

__all__ = ["DEFAULT_DELTA", "DpPlan", "DpQueryError", "PrivateQueries", "odometer_cost"]
