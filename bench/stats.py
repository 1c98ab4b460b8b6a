"""Percentiles and the connections every part opens."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0–1) of ``values``, the nearest rank.

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.99)
    10
    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5)
    6
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95, p99, mean and count of ``seconds``, in milliseconds.

    >>> summary_ms([0.001, 0.002, 0.003])["p50"]
    2.0
    """
    ms = [s * 1e3 for s in seconds]
    return {"p50": statistics.median(ms), "p95": percentile(ms, 0.95),
            "p99": percentile(ms, 0.99), "mean": statistics.fmean(ms), "n": len(ms)}


def adbc_connect(url: str, user: str | None = None, password: str | None = None) -> Any:
    """An ADBC Flight SQL connection (DB-API), logged in when ``user`` is given."""
    import adbc_driver_flightsql.dbapi as flight_sql

    kwargs = {"username": user, "password": password or ""} if user else {}
    return flight_sql.connect(url, db_kwargs=kwargs, autocommit=True)
