"""A query's parameters: what it expects, and the values a client bound to them.

A query's parameters are positional (``?``, or numbered ``$1``, ``$2``) or named
(``$min_age``, or ``:min_age`` in dialects that write them so); one query uses
one kind. A client binds them with an Arrow batch, one row per execution:
positional parameters take the batch's columns in order, named ones the columns
of the same name (a leading ``$``, ``:`` or ``@`` in a column name is ignored).
:func:`bind` checks a batch against the query and refuses, naming the parameter,
one that is missing or unknown, before anything runs.

DuckDB does not report the types of prepared-statement parameters, and JDBC
clients build their parameter vectors from the schema the server sends. We infer
each placeholder's type from what it is compared with (``col = ?``, ``? BETWEEN a
AND b``, ``col IN (?, ?)``, ``col LIKE ?``); a parameter with nothing to compare with
gets Arrow's ``null`` type, which clients read as "any".

>>> import sqlglot
>>> query = sqlglot.parse_one("SELECT * FROM t WHERE age > $min_age AND age < $max_age",
...                           read="duckdb")
>>> bind(query, Parameters.of({"max_age": 70, "$min_age": 60}), required=True)
[{'min_age': 60, 'max_age': 70}]
>>> bind(query, Parameters.of({"min_age": 60}), required=True)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gateway.errors.InputError: Parameter $max_age has no value: bind a value named 'max_age' (...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types

from gateway.errors import InputError

#: A query's bound values for one execution: a list (positional) or a dict (named).
Binding = list[Any] | dict[str, Any]
_PREFIXES = "$:@"


@dataclass(frozen=True)
class Parameters:
    """Values bound to a statement: column names as the client sent them, and rows.

    >>> p = Parameters.of(pa.record_batch({"a": [1, 2], "b": ["x", "y"]}))
    >>> p.names, p.rows, p.first().rows
    (('a', 'b'), ((1, 'x'), (2, 'y')), ((1, 'x'),))
    >>> Parameters.of([5, "z"]).rows, Parameters.of(None)
    (((5, 'z'),), None)
    """

    names: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    @classmethod
    def of(cls, value: Parameters | pa.RecordBatch | pa.Table | Mapping[str, Any]
           | Sequence[Any] | None) -> Parameters | None:
        """Parameters from an Arrow batch, a mapping (one named row) or a sequence (one row)."""
        if value is None or isinstance(value, Parameters):
            return value
        if isinstance(value, pa.RecordBatch | pa.Table):
            if value.num_columns == 0:
                return None
            columns = [column.to_pylist() for column in value.columns]
            return cls(tuple(value.schema.names), tuple(zip(*columns, strict=True)))
        if isinstance(value, Mapping):
            return cls(tuple(value), (tuple(value.values()),))
        values = tuple(value)
        return cls(tuple(str(i + 1) for i in range(len(values))), (values,))

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def first(self) -> Parameters:
        """The first row only (what a result's types are inferred from)."""
        return Parameters(self.names, self.rows[:1])


#: What a caller may bind: one row of values, named values, or rows (an Arrow batch).
ParameterValues = Parameters | pa.RecordBatch | pa.Table | Sequence[Any] | Mapping[str, Any] | None


def placeholder_keys(expression: exp.Expr) -> list[str | None]:
    """Each placeholder's name in SQL order: None for ``?``, digits for ``$1``, else the name.

    >>> import sqlglot
    >>> placeholder_keys(sqlglot.parse_one("SELECT ?, $2, $min_age, :x", read="duckdb"))
    [None, '2', 'min_age', 'x']
    """
    return [str(node.this) if node.this is not None else None
            for node in expression.find_all(exp.Placeholder, bfs=False)]


def _shown(key: str | None) -> str:
    return "?" if key is None else f"${key}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def expected_parameters(expression: exp.Expr) -> tuple[str, list[str]]:
    """``("positional", [shown…])`` or ``("named", [names…])``: what the query takes.

    >>> import sqlglot
    >>> expected_parameters(sqlglot.parse_one("SELECT $b, $a, $b", read="duckdb"))
    ('named', ['b', 'a'])
    >>> expected_parameters(sqlglot.parse_one("SELECT $2, ?", read="duckdb"))
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: The query mixes ? and numbered ($1) parameters; use one kind.
    """
    keys = placeholder_keys(expression)
    named = list(dict.fromkeys(k for k in keys if k is not None and not k.isdigit()))
    numbered = sorted({int(k) for k in keys if k is not None and k.isdigit()})
    anonymous = sum(1 for k in keys if k is None)
    if named and (numbered or anonymous):
        raise InputError("The query mixes named ($name) and positional (?, $1) parameters; "
                         "use one kind.")
    if numbered and anonymous:
        raise InputError("The query mixes ? and numbered ($1) parameters; use one kind.")
    if named:
        return "named", named
    if numbered:
        return "positional", [f"${i}" for i in range(1, max(numbered) + 1)]
    return "positional", ["?"] * anonymous


def bind(expression: exp.Expr, parameters: Parameters | None, *,
         required: bool) -> list[Binding]:
    """The values of each execution of ``expression`` (one per parameter row, at least one).

    ``required`` (the query is about to run) refuses a query whose parameters were
    not bound; otherwise (describing a statement) they are bound to NULL. Values
    that do not fit the query are refused either way.

    >>> import sqlglot
    >>> q = sqlglot.parse_one("SELECT * FROM t WHERE a = ? AND b = ?", read="duckdb")
    >>> bind(q, Parameters.of(pa.record_batch({"0": [1, 2], "1": [3, 4]})), required=True)
    [[1, 3], [2, 4]]
    >>> bind(q, None, required=False)
    [[None, None]]
    >>> bind(q, Parameters.of([1]), required=True)
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: The query takes 2 parameters (?, ?) but 1 value was bound per row.
    """
    kind, expected = expected_parameters(expression)
    if parameters is None or not parameters.rows:
        if required and expected:
            first = expected[0] if kind == "positional" else f"${expected[0]}"
            raise InputError(
                f"Parameter {first} has no value: the query takes "
                f"{_plural(len(expected), 'parameter')} ({_listed(kind, expected)}); bind them "
                "with a prepared statement before executing it.")
        if kind == "named":
            return [dict.fromkeys(expected)]
        return [[None] * len(expected)]
    if not expected:
        n = len(parameters.names)
        raise InputError(f"The query takes no parameters, but {_plural(n, 'value')} "
                         f"{'was' if n == 1 else 'were'} bound per row.")
    if kind == "positional":
        if len(parameters.names) != len(expected):
            raise InputError(
                f"The query takes {_plural(len(expected), 'parameter')} "
                f"({_listed(kind, expected)}) but {_plural(len(parameters.names), 'value')} "
                f"{'was' if len(parameters.names) == 1 else 'were'} bound per row.")
        return [list(row) for row in parameters.rows]
    given: dict[str, int] = {}
    for i, name in enumerate(parameters.names):
        bare = name.lstrip(_PREFIXES)
        if bare not in expected:
            raise InputError(f"Parameter '{name}' is not in the query (its parameters are "
                             f"{_listed(kind, expected)}).")
        given[bare] = i
    for name in expected:
        if name not in given:
            raise InputError(f"Parameter ${name} has no value: bind a value named '{name}' "
                             f"(the query's parameters are {_listed(kind, expected)}).")
    return [{name: row[given[name]] for name in expected} for row in parameters.rows]


def _listed(kind: str, expected: list[str]) -> str:
    return ", ".join(expected if kind == "positional" else [f"${n}" for n in expected])

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike,
                exp.NullSafeEQ, exp.NullSafeNEQ, exp.Add, exp.Sub, exp.Mul, exp.Div)


def _known(node: exp.Expr | None) -> str | None:
    if node is None or node.type is None:
        return None
    if node.type.this in (exp.DataType.Type.UNKNOWN, exp.DataType.Type.NULL):
        return None
    return node.type.sql(dialect="duckdb")


def placeholder_types(
    expression: exp.Expr, schema: dict[str, dict[str, dict[str, str]]]
) -> list[str | None]:
    """DuckDB type names of the placeholders, in SQL order (None = unknown).

    >>> import sqlglot
    >>> e = sqlglot.parse_one("SELECT * FROM d.t WHERE t.x > ? AND t.y IN (?, ?) AND ? < 3",
    ...                       read="duckdb")
    >>> placeholder_types(e, {"d": {"t": {"x": "BIGINT", "y": "VARCHAR"}}})
    ['BIGINT', 'TEXT', 'TEXT', 'INT']
    """
    annotated = annotate_types(expression.copy(), schema=dict(schema), dialect="duckdb")
    types: list[str | None] = []
    for node in annotated.find_all(exp.Placeholder, bfs=False):
        parent = node.parent
        found: str | None = None
        if isinstance(parent, _COMPARISONS):
            other = parent.expression if parent.this is node else parent.this
            found = _known(other)
        elif isinstance(parent, exp.Between):
            if parent.this is node:
                found = _known(parent.args.get("low")) or _known(parent.args.get("high"))
            else:
                found = _known(parent.this)
        elif isinstance(parent, exp.In) and parent.this is not node:
            found = _known(parent.this)
        types.append(found)
    return types
