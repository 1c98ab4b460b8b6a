"""When the same column in two domains can be merged: type kinds and common types.

Domains hold their own copies of a dataset, and the types need not match exactly
(``INTEGER`` in one, ``BIGINT`` or ``DOUBLE`` in another). Columns are
compatible when their types are of the same *kind*; the federated catalog shows
the common type of the kind.

>>> kind(pa.int32()) == kind(pa.float64()) == kind(pa.decimal128(10, 2))
True
>>> common_type([pa.int32(), pa.int64()]), common_type([pa.int64(), pa.float32()])
(DataType(int64), DataType(double))
>>> common_type([pa.string(), pa.int64()]) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa


def kind(type_: pa.DataType) -> str:
    """``number``, ``string``, ``boolean``, ``date``, ``timestamp``, ``binary`` or the type."""
    t = pa.types
    if t.is_integer(type_) or t.is_floating(type_) or t.is_decimal(type_):
        return "number"
    if t.is_string(type_) or t.is_large_string(type_) or getattr(t, "is_string_view",
                                                                   lambda _: False)(type_):
        return "string"
    if t.is_boolean(type_):
        return "boolean"
    if t.is_date(type_):
        return "date"
    if t.is_timestamp(type_):
        return "timestamp"
    if t.is_binary(type_) or t.is_large_binary(type_) or t.is_fixed_size_binary(type_):
        return "binary"
    return str(type_)


def common_type(types: Sequence[pa.DataType]) -> pa.DataType | None:
    """The type that holds values of all ``types``, or None if their kinds differ."""
    if not types:
        return None
    kinds = {kind(t) for t in types}
    if len(kinds) != 1:
        return None
    first = types[0]
    if all(t.equals(first) for t in types):
        return first
    k = kinds.pop()
    if k == "number":
        if all(pa.types.is_integer(t) for t in types):
            return pa.int64()
        return pa.float64()
    if k == "string":
        return pa.utf8()
    if k == "date":
        return pa.date32()
    if k == "binary":
        return pa.binary()
    return first
