"""One request's answer within its role's limits, and the sign that it was cut.

A request runs its plan once per parameter row, one after another
(:class:`Execution`): every run gets what is left of the request's one
:class:`gateway.limits.Deadline`, and the rows of all runs together stop at the
role's ``max_rows``. The plan asks the engine for ``max_rows + 1`` rows, so the
answer knows it was cut when one more row was there.

A cut answer says so in its Arrow schema metadata, ``stockade.truncated: true``
and ``stockade.max_rows: N``. The schema is sent before the rows, and ADBC shows
its user the schema of GetFlightInfo, not that of the stream, so the sign must
be known before anything is sent. :func:`look_ahead` reads the answer up to
:data:`LOOKAHEAD_BYTES`: most answers end before that (then the whole answer is
in hand, cut or not), and for a longer one the engine counts, up to
``max_rows + 1``, the rows the plan would return (:func:`count_rows`) and the
stream goes on from where the look-ahead stopped.

>>> schema = pa.schema([("n", pa.int64())])
>>> marked(schema, truncated=True, max_rows=20).metadata
{b'stockade.truncated': b'true', b'stockade.max_rows': b'20'}
>>> marked(schema, truncated=False, max_rows=20).metadata is None
True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gateway.engine import Engine
from gateway.errors import InputError, QueryTimeoutError
from gateway.limits import MAX_ROWS_KEY, TRUNCATED_KEY, Deadline
from gateway.parameters import Binding

#: How much of an answer is read before its schema is sent. Answers that end
#: within it (nearly every aggregate) are held whole; a longer one costs a count.
LOOKAHEAD_BYTES = 8 * 1024 * 1024


def marked(schema: pa.Schema, *, truncated: bool, max_rows: int) -> pa.Schema:
    """``schema`` with the truncation keys when ``truncated`` (unchanged otherwise)."""
    if not truncated:
        return schema
    meta = dict(schema.metadata or {})
    meta[TRUNCATED_KEY] = b"true"
    meta[MAX_ROWS_KEY] = str(max_rows).encode()
    return schema.with_metadata(meta)


class Execution:
    """The runs of ``sql``, one per binding, under one deadline, ``max_rows`` rows in all.

    The first run starts at once (its schema is the answer's); the others start
    when the rows before them have been read. ``truncated`` is true once a row
    past ``max_rows`` was seen; ``rows`` counts the rows handed out.
    """

    def __init__(self, engine: Engine, sql: str, bindings: Sequence[Binding], *,
                 deadline: Deadline, max_rows: int) -> None:
        self.engine = engine
        self.sql = sql
        self.bindings = list(bindings) or [[]]
        self.deadline = deadline
        self.max_rows = max_rows
        self.truncated = False
        self.rows = 0
        # The engine stays open for every run, even if the policy is replaced between two.
        engine.acquire()
        self._released = False
        try:
            self._first = self._start(self.bindings[0])
        except BaseException:
            self._release()
            raise
        self.schema: pa.Schema = self._first.schema
        self.batches: Iterator[pa.RecordBatch] = self._iterate()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.engine.release()

    def _start(self, binding: Binding) -> pa.RecordBatchReader:
        try:
            return self.engine.execute(self.sql, binding or None,
                                       timeout_s=self.deadline.timeout())
        except QueryTimeoutError:
            raise self.deadline.error() from None

    def _iterate(self) -> Iterator[pa.RecordBatch]:
        for i, binding in enumerate(self.bindings):
            reader = self._first if i == 0 else self._start(binding)
            try:
                if not reader.schema.equals(self.schema):
                    raise InputError("The parameter rows give results of different types: "
                                     "execute them one at a time")
                for batch in reader:
                    if self.rows + batch.num_rows > self.max_rows:
                        keep = self.max_rows - self.rows
                        self.truncated = True
                        if keep:
                            self.rows += keep
                            yield batch.slice(0, keep)
                        return
                    self.rows += batch.num_rows
                    yield batch
            except QueryTimeoutError:
                raise self.deadline.error() from None
            finally:
                reader.close()

    def close(self) -> None:
        """Stop reading (frees the engine's cursor and the engine)."""
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()
        self._first.close()
        self._release()


@dataclass
class Answer:
    """An answer whose schema is final: ``table`` if read whole, else ``batches`` to stream.

    ``execution`` is the runs it comes from (:meth:`close` stops them).
    """

    schema: pa.Schema
    truncated: bool
    execution: Execution
    table: pa.Table | None = None
    batches: Iterator[pa.RecordBatch] | None = None

    def close(self) -> None:
        self.execution.close()

    def reader(self) -> pa.RecordBatchReader:
        if self.table is not None:
            return pa.RecordBatchReader.from_batches(self.schema, self.table.to_batches())
        assert self.batches is not None
        return pa.RecordBatchReader.from_batches(self.schema, self.batches)


def count_rows(engine: Engine, sql: str, bindings: Sequence[Binding], *,
               deadline: Deadline, max_rows: int) -> int:
    """How many rows the runs of ``sql`` give, counted by the engine; stops past ``max_rows``.

    ``sql`` is a plan, limited to ``max_rows + 1`` rows per run: the count costs
    no more than the runs up to the cut, and sends nothing.
    """
    total = 0
    for binding in bindings or [[]]:
        try:
            reader = engine.execute(f"SELECT count(*) FROM ({sql}) AS _stockade_rows",
                                    binding or None, timeout_s=deadline.timeout())
            total += int(reader.read_all().column(0)[0].as_py())
        except QueryTimeoutError:
            raise deadline.error() from None
        if total > max_rows:
            break
    return total


def look_ahead(execution: Execution, *, budget: int = LOOKAHEAD_BYTES) -> Answer:
    """Read ``execution`` until it ends or ``budget`` bytes are held; its final schema.

    An answer that ends within the budget comes back whole (``table``); a longer
    one comes back as a stream (``batches``: what was read, then the rest), cut or
    not as :func:`count_rows` says.
    """
    held: list[pa.RecordBatch] = []
    size = 0
    for batch in execution.batches:
        held.append(batch)
        size += batch.nbytes
        if size >= budget:
            break
    else:
        execution.close()
        schema = marked(execution.schema, truncated=execution.truncated,
                        max_rows=execution.max_rows)
        return Answer(schema, execution.truncated, execution,
                      table=pa.Table.from_batches(held, schema=schema))
    truncated = count_rows(execution.engine, execution.sql, execution.bindings,
                           deadline=execution.deadline,
                           max_rows=execution.max_rows) > execution.max_rows
    schema = marked(execution.schema, truncated=truncated, max_rows=execution.max_rows)
    return Answer(schema, truncated, execution, batches=itertools.chain(held, execution.batches))


def answer_key(user: str, sql: str, bindings: Sequence[Binding]) -> tuple[Any, ...]:
    """Which request an answer held between GetFlightInfo and DoGet belongs to."""
    return (user, sql, repr(list(bindings)))
