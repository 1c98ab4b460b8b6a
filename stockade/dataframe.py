"""The answer of a query: a polars DataFrame with its privacy metadata.

:class:`DataFrame` is a :class:`polars.DataFrame` (``isinstance`` holds, and every
polars method works) with attributes more: ``privacy``, the answer's cost and
accuracy (:class:`stockade.Privacy`), or None for an answer without noise; and
``truncated``, true when the answer stops at the role's ``max_rows`` (that
limit is then in ``max_rows``). They belong to the answer as the gateway sent
it, so polars operations on it (``filter``, ``with_columns``, ``join``, …)
return plain polars DataFrames. A pandas answer has them in ``df.attrs``.

>>> import polars as pl
>>> df = DataFrame.of(pl.DataFrame({"n": [1, 2]}), None)
>>> isinstance(df, pl.DataFrame), df.privacy, df.truncated, type(df.head(1)).__name__
(True, None, False, 'DataFrame')
>>> DataFrame.of(pl.DataFrame({"n": [1, 2]}), None, max_rows=2).truncated
True
>>> type(df.head(1)) is pl.DataFrame
True
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from gateway.limits import truncated_at
from stockade.privacy import Privacy, privacy_of


class DataFrame(pl.DataFrame):
    """A polars DataFrame carrying the ``privacy`` of the answer it holds, and its cut."""

    privacy: Privacy | None = None
    #: The role's row limit the answer was cut at; None when it is whole.
    max_rows: int | None = None

    @property
    def truncated(self) -> bool:
        """True when the gateway cut the answer at the role's ``max_rows``."""
        return self.max_rows is not None

    @classmethod
    def of(cls, frame: pl.DataFrame, privacy: Privacy | None, *,
           max_rows: int | None = None) -> DataFrame:
        """``frame`` (not copied) with ``privacy`` and the row limit it was cut at attached."""
        df = cls.__new__(cls)
        df._df = frame._df
        df.privacy = privacy
        df.max_rows = max_rows
        return df

    @classmethod
    def _from_pydf(cls, py_df: Any) -> pl.DataFrame:
        # Results of polars operations are plain frames: the privacy was the answer's.
        return pl.DataFrame._from_pydf(py_df)


def as_polars(table: pa.Table) -> DataFrame:
    """An answer as a :class:`DataFrame` with the privacy its schema carries."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return DataFrame.of(frame, privacy_of(table.schema), max_rows=truncated_at(table.schema))


def as_pandas(table: pa.Table) -> pd.DataFrame:
    """An answer as a pandas DataFrame: ``attrs`` ``privacy``, ``truncated``, ``max_rows``."""
    frame = table.to_pandas()
    frame.attrs["privacy"] = privacy_of(table.schema)
    frame.attrs["max_rows"] = truncated_at(table.schema)
    frame.attrs["truncated"] = frame.attrs["max_rows"] is not None
    return frame
