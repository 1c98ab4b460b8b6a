"""Stockade's Python client: SQL and dataframes through a privacy gateway.

>>> import stockade
>>> stockade.version
'0.1.0'

Connect, query, and read what an answer cost::

    conn = stockade.connect("grpc://127.0.0.1:8815", user="ann")  # password: $STOCKADE_PASSWORD
    df = conn.sql("SELECT site, count(*) AS n FROM oncology.screenings GROUP BY site")
    df.privacy.epsilon_spent, df.privacy.columns["n"].ci95_half_width

See docs/clients.md, "The Python client".
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from gateway.errors import (
    AuthenticationError,
    BudgetExhaustedError,
    InputError,
    NotSupportedError,
    PermissionDeniedError,
    SqlError,
    StockadeError,
    TableNotFoundError,
    UnavailableError,
    UnknownColumnError,
)
from stockade.client import Connection, connect
from stockade.dataframe import DataFrame
from stockade.errors import TruncatedAnswerWarning
from stockade.frame import Table
from stockade.privacy import ColumnNoise, DomainSpend, Privacy

try:
    version = _version("stockade")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    version = "0.0.0"
__version__ = version

__all__ = [
    "AuthenticationError",
    "BudgetExhaustedError",
    "ColumnNoise",
    "Connection",
    "DataFrame",
    "DomainSpend",
    "InputError",
    "NotSupportedError",
    "PermissionDeniedError",
    "Privacy",
    "SqlError",
    "StockadeError",
    "Table",
    "TableNotFoundError",
    "TruncatedAnswerWarning",
    "UnavailableError",
    "UnknownColumnError",
    "__version__",
    "connect",
    "version",
]
