"""The answer of a query: a polars DataFrame with its privacy metadata.

:class:`DataFrame` is a :class:`polars.DataFrame` (``isinstance`` holds, and every
polars method works) with one attribute more, ``privacy``: the answer's cost and
accuracy (:class:`stockade.Privacy`), or None for an answer without noise. The
privacy belongs to the answer as the gateway sent it, so polars operations on it
(``filter``, ``with_columns``, ``join``, …) return plain polars DataFrames.

>>> import polars as pl
>>> df = DataFrame.of(pl.DataFrame({"n": [1, 2]}), None)
>>> isinstance(df, pl.DataFrame), df.privacy, type(df.head(1)).__name__
(True, None, 'DataFrame')
>>> type(df.head(1)) is pl.DataFrame
True
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from stockade.privacy import Privacy, privacy_of


class DataFrame(pl.DataFrame):
    """A polars DataFrame carrying the ``privacy`` of the answer it holds."""

    privacy: Privacy | None = None

    @classmethod
    def of(cls, frame: pl.DataFrame, privacy: Privacy | None) -> DataFrame:
        """``frame`` (not copied) with ``privacy`` attached."""
        df = cls.__new__(cls)
        df._df = frame._df
        df.privacy = privacy
        return df

    @classmethod
    def _from_pydf(cls, py_df: Any) -> pl.DataFrame:
        # Results of polars operations are plain frames: the privacy was the answer's.
        return pl.DataFrame._from_pydf(py_df)


def as_polars(table: pa.Table) -> DataFrame:
    """An answer as a :class:`DataFrame` with the privacy its schema carries."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return DataFrame.of(frame, privacy_of(table.schema))


def as_pandas(table: pa.Table) -> pd.DataFrame:
    """An answer as a pandas DataFrame, its privacy in ``attrs["privacy"]``."""
    frame = table.to_pandas()
    frame.attrs["privacy"] = privacy_of(table.schema)
    return frame
