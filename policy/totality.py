"""Analyst expressions that read rows and can never fail (``dp`` mode).

In ``dp`` mode whether a query succeeds must not depend on one person's row
(security invariant 6). A ``WHERE``, a grouping expression or an owner's mask is
evaluated on every row, so each one is made *total* at plan time:

- :func:`check_total` refuses, before any data is read, the calls whose errors
  ``TRY`` does not catch when an argument comes from the data (the time zone of
  ``timezone()``, the part of ``date_part()``, ...): the message depends only on
  the SQL, with the analyst's line and column;
- :func:`make_total` wraps every sub-expression that may raise in ``TRY(...)``,
  which turns its error into NULL. Plain comparisons of a column with a literal
  of a compatible type stay unwrapped, so that the scan can still check them
  against row-group statistics; a date or timestamp column compared with a string literal gets the
  literal as ``TRY(CAST('…' AS DATE))``, a constant DuckDB folds.

>>> import sqlglot
>>> where = sqlglot.parse_one("age > 30 AND CAST(name AS INT) = 3", read="duckdb")
>>> make_total(where, types={"age": "BIGINT", "name": "VARCHAR"}, predicate=True).sql("duckdb")
'age > 30 AND TRY(CAST(name AS INT) = 3)'
>>> try:
...     check_total(sqlglot.parse_one("timezone(name, ts)", read="duckdb"))
... except PartialFunctionError as err:
...     print(err.message[:53], "...", (err.line, err.col))
timezone() can fail on a value of the data, and wheth ... (1, 10)

What ``TRY`` catches was measured, not assumed (``tests/totality_probe.py``
runs every allowed function, every overload and argument, on adversarial
values; :data:`ESCAPES_TRY` is its result and ``tests/test_policy_totality.py``
runs it again on the installed DuckDB). Three DuckDB optimizers raise errors
outside the ``TRY`` the rewrite puts in: the engine turns them off
(:data:`DISABLED_OPTIMIZERS`).

Cost, measured on 1M rows of Parquet (DuckDB 1.5.5, 2 threads, on a 2-core
machine under a load of ~9, medians of 11 to 25 interleaved runs, so only the
larger differences mean anything): ``WHERE age > 30`` 3.6-8.0 ms and
``WHERE TRY(age > 30)`` 3.1-6.2 ms (the scan then evaluates it as an expression
rather than a comparison it can check against row-group statistics, which costs
nothing measurable here); ``CAST(code AS INT) > 500`` 23 ms,
in ``TRY`` 35 ms. A value that does fail costs DuckDB a second, row-by-row pass
over its vector of 2,048 rows: one failing row moved the median from 62 to 54 ms
in one series and from 90 to 96 ms in another (within the noise), and ~12-20 µs
per row when every row fails (1.2-2.0 s for 100k failing rows). That time
depends on the data; bounding it is for the cost model and the timeout.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
from sqlglot import exp

from gateway.errors import SqlError
from policy.calls import duckdb_call, family, may_bind, type_of
from policy.locate import location
from policy.totality_table import TABLE

#: The DuckDB optimizers that raise errors ``TRY`` cannot catch; the engine that
#: runs analyst SQL turns them off. ``common_subexpressions`` computes a repeated
#: sub-expression once, below the ``TRY`` around it; ``in_clause`` turns an ``IN``
#: list into a join whose implicit cast runs outside it; ``statistics_propagation``
#: evaluates functions on a column's minimum and maximum while planning, outside
#: any ``TRY`` and from the data's statistics (``epoch_ns`` of a date in year
#: 5877642 fails the plan).
DISABLED_OPTIMIZERS = ("common_subexpressions", "in_clause", "statistics_propagation")

#: The largest literal count ``repeat``/``lpad``/``rpad`` may take in dp mode: a
#: larger one can run out of memory on long values (an error ``TRY`` lets through).
MAX_REPEAT = 10_000


class PartialFunctionError(SqlError):
    """An expression evaluated on rows that could fail on one person's value."""


@dataclass(frozen=True)
class Escape:
    """One overload's argument whose bad values raise an error ``TRY`` lets through.

    ``column``: raised when the value comes from the data; ``literals``: the
    probed values (as SQL) that raise when written as literals (such a literal
    fails only when some row reaches it, so its failure depends on the data too).
    """

    function: str  # DuckDB's name, or the SQL form (``AT TIME ZONE``)
    position: int  # the argument, in DuckDB's order
    signature: tuple[str, ...]  # the overload's argument types
    error: str  # the DuckDB exception class
    column: bool
    literals: tuple[str, ...]
    template: str  # the call, ``{i}`` for argument i
    ordinary: tuple[str, ...]  # arguments with which the call runs (SQL)
    constant: bool  # whether those were written as literals (else read from a table)


#: Every (function, argument, overload) whose errors ``TRY`` lets through, as
#: measured by ``tests/totality_probe.py`` (:mod:`policy.totality_table`).
ESCAPES_TRY: tuple[Escape, ...] = tuple(Escape(*row) for row in TABLE)


def _by_function() -> dict[str, list[Escape]]:
    found: dict[str, list[Escape]] = {}
    for escape in ESCAPES_TRY:
        found.setdefault(escape.function, []).append(escape)
    return found


_ESCAPES = _by_function()

#: How a literal at an escaping argument is checked: ``count`` (an integer up to
#: MAX_REPEAT; evaluating a larger one could itself exhaust memory); any other
#: literal is evaluated once, with DuckDB, on ordinary values of the overload.
_LITERAL_RULES = {("repeat", 1): "count", ("lpad", 1): "count", ("rpad", 1): "count"}

#: How to write each function's argument so that it cannot fail.
_ZONE = "its time zone must be a literal DuckDB knows, e.g. 'UTC' or 'Europe/Paris'"
_PART = "the part must be a literal that fits the value, e.g. {}"
_ESCAPE = "the escape must be a literal of at most one character"
_REGEX = "the pattern must be a literal DuckDB can compile (RE2 syntax)"
_ADVICE = {
    "timezone": _ZONE, "AT TIME ZONE": _ZONE, "make_timestamptz": _ZONE,
    "time_bucket": "its width must be a positive literal interval and its time zone a "
                   "literal DuckDB knows, e.g. time_bucket(INTERVAL '1 day', ts)",
    "date_part": _PART.format("date_part('year', d)"),
    "datepart": _PART.format("datepart('year', d)"),
    "date_diff": _PART.format("date_diff('day', a, b)"),
    "datediff": _PART.format("datediff('day', a, b)"),
    "date_sub": _PART.format("date_sub('day', a, b)"),
    "datesub": _PART.format("datesub('day', a, b)"),
    "date_trunc": _PART.format("date_trunc('month', d)"),
    "datetrunc": _PART.format("datetrunc('month', d)"),
    "like_escape": _ESCAPE, "ilike_escape": _ESCAPE, "LIKE ESCAPE": _ESCAPE,
    "ILIKE ESCAPE": _ESCAPE,
    "array_length": "leave out the dimension, array_length(list), or write 1",
    "list_reduce": "give it an initial value: list_reduce(list, lambda, initial)",
    "repeat": f"the count must be a literal of at most {MAX_REPEAT}",
    "lpad": f"the length must be a literal of at most {MAX_REPEAT}",
    "rpad": f"the length must be a literal of at most {MAX_REPEAT}",
    "regexp_extract": _REGEX, "regexp_extract_all": _REGEX, "regexp_replace": _REGEX,
}


def _is_constant(node: exp.Expr) -> bool:
    """No column, no lambda variable, no subquery: the same value on every row."""
    return not any(isinstance(n, exp.Column | exp.Identifier | exp.Select | exp.Lambda)
                   and not (isinstance(n, exp.Identifier) and isinstance(n.parent, exp.DataType))
                   for n in node.walk())


# -- the check


def check_total(
    expression: exp.Expr,
    *,
    types: Mapping[str, str] | None = None,
    what: str | None = None,
) -> None:
    """Refuse a call in ``expression`` that can fail on a value of the data in a way
    ``TRY`` does not catch (see :data:`ESCAPES_TRY`).

    An argument that comes from the data is refused outright; a literal there is
    checked once with DuckDB on ordinary values, so that it is refused now, not
    when some row reaches it. ``what`` names the expression in messages when it is
    not the analyst's (an owner's mask or filter).

    >>> import sqlglot
    >>> check_total(sqlglot.parse_one("timezone('UTC', ts)", read="duckdb"))
    >>> try:
    ...     check_total(sqlglot.parse_one("timezone('Bad/Zone', ts)", read="duckdb"))
    ... except PartialFunctionError as err:
    ...     print(err.message.split(" whenever")[0])
    timezone() fails on this literal argument ('Bad/Zone')
    """
    # Innermost calls first: a literal is evaluated only once the calls in it passed.
    for node in reversed(list(expression.walk(bfs=False))):
        call = duckdb_call(node)
        if call is None:
            continue
        name, args = call
        for escape in _ESCAPES.get(name, ()):
            if len(escape.signature) != len(args):
                continue
            if not all(may_bind(type_of(a, types), t)
                       for a, t in zip(args, escape.signature, strict=True)):
                continue
            argument = args[escape.position]
            if argument is not None and _is_constant(argument):
                if escape.literals and not _literal_is_safe(escape, args, argument):
                    raise _refuse(name, argument, node, literal=True, what=what)
            elif escape.column or argument is None:
                raise _refuse(name, argument, node, literal=False, what=what)


def _refuse(name: str, argument: exp.Expr | None, node: exp.Expr, *, literal: bool,
            what: str | None) -> PartialFunctionError:
    shown = name if name.isupper() else f"{name}()"
    advice = _ADVICE.get(name, "write that argument as a literal that does not fail")
    if literal and argument is not None:
        text = (f"{shown} fails on this literal argument ({argument.sql(dialect='duckdb')}) "
                f"whenever a row reaches it; {advice}")
    else:
        text = (f"{shown} can fail on a value of the data, and whether a query fails must "
                f"not depend on one person; {advice}")
    if what is not None:
        return PartialFunctionError(f"{what}: {text}")
    line, col = _start(argument if argument is not None else node)
    return PartialFunctionError(text, line=line, col=col)


def _start(node: exp.Expr) -> tuple[int | None, int | None]:
    """Where ``node`` starts in the analyst's SQL: sqlglot records the end of a
    typed function's name (``LOWER``), and where an untyped one starts."""
    line, col = location(node)
    start, end = node.meta.get("start"), node.meta.get("end")
    if (isinstance(node, exp.Func) and not isinstance(node, exp.Anonymous)
            and col is not None and node.meta.get("col") == col
            and isinstance(start, int) and isinstance(end, int)):
        col = max(col - (end - start), 1)
    return line, col


def _literal_is_safe(escape: Escape, args: list[exp.Expr | None], literal: exp.Expr) -> bool:
    rule = _LITERAL_RULES.get((escape.function, escape.position))
    if rule == "count":
        value = literal.this if isinstance(literal, exp.Neg) else literal
        return (isinstance(value, exp.Literal) and value.is_int
                and (isinstance(literal, exp.Neg) or int(value.name) <= MAX_REPEAT))
    return not _fails(_evaluation(escape, literal))


def _evaluation(escape: Escape, literal: exp.Expr) -> str:
    """SQL that runs ``escape``'s call once with ``literal`` at its argument and the
    probe's ordinary values elsewhere, read from a one-row table as the probe did
    (a call of constants only is folded, and fails otherwise than on rows)."""
    args, columns = [], []
    for i, (t, value) in enumerate(zip(escape.signature, escape.ordinary, strict=True)):
        if i == escape.position:
            args.append(f"CAST({literal.sql(dialect='duckdb')} AS {t})")
        elif t == "LAMBDA":
            args.append(value)
        elif escape.constant:
            args.append(f"CAST({value} AS {t})")
        else:
            args.append(f"o.c{i}")
            columns.append(f"CAST({value} AS {t}) AS c{i}")
    call = escape.template.format(*args)
    if not columns:
        return f"SELECT TRY({call})"
    return f"SELECT TRY({call}) FROM {_ordinary_table(tuple(columns))} AS o"


_evaluator_lock = threading.Lock()
#: How long the check may evaluate one literal (constants only: a literal that
#: takes longer is refused).
_EVALUATION_TIMEOUT_S = 2.0


@functools.lru_cache(maxsize=1)
def _evaluator() -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB, configured like the engine, holding only the
    one-row tables of ordinary values."""
    con = duckdb.connect(":memory:")
    con.execute(f"SET disabled_optimizers = '{','.join(DISABLED_OPTIMIZERS)}'")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


@functools.lru_cache(maxsize=1024)
def _ordinary_table(columns: tuple[str, ...]) -> str:
    name = f"ordinary_{abs(hash(columns))}"
    with _evaluator_lock:
        _evaluator().execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT "
                             f"{', '.join(columns)}")
    return name


@functools.lru_cache(maxsize=4096)
def _fails(sql: str) -> bool:
    """Whether ``sql`` (over the evaluator's tables only) raises on DuckDB."""
    with _evaluator_lock:
        cursor = _evaluator().cursor()
    timer = threading.Timer(_EVALUATION_TIMEOUT_S, cursor.interrupt)
    timer.start()
    try:
        cursor.execute(sql).fetchall()
        return False
    except duckdb.Error:
        return True  # failed, or took too long: refused either way
    finally:
        timer.cancel()
        cursor.close()


# -- the rewrite

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ,
                exp.NullSafeNEQ)
_INT64 = 2**63 - 1
#: Integer column types whose comparison with an int64 literal cannot fail
#: (HUGEINT and UHUGEINT can: ``uhugeint_col = -1`` raises).
_SMALL_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                   "UINTEGER", "UBIGINT", "INT1", "INT2", "INT4", "INT8", "INT", "LONG",
                   "SHORT"}
_TEMPORAL = {"date", "timestamp", "timestamptz", "time", "timetz", "interval"}


def _int_literal(node: exp.Expr) -> bool:
    value = node.this if isinstance(node, exp.Neg) else node
    return (isinstance(value, exp.Literal) and value.is_int
            and abs(int(value.name)) <= _INT64)


def _number_literal(node: exp.Expr) -> bool:
    value = node.this if isinstance(node, exp.Neg) else node
    return isinstance(value, exp.Literal) and value.is_number


def _safe_pair(column_type: str, literal: exp.Expr) -> bool:
    """Whether comparing a column of ``column_type`` with ``literal`` cannot fail
    (measured: ``tests/test_policy_totality.py``)."""
    if isinstance(literal, exp.Null):
        return True
    kind = family(column_type)
    upper = column_type.upper()
    if kind == "integer":
        return upper in _SMALL_INTEGERS and _int_literal(literal)
    if kind == "number":
        if upper.startswith(("FLOAT", "DOUBLE", "REAL")):
            return _number_literal(literal)
        return _int_literal(literal)  # DECIMAL
    if kind == "string" and upper.startswith(("VARCHAR", "TEXT", "STRING")):
        return isinstance(literal, exp.Literal) and literal.is_string
    if kind == "boolean":
        return isinstance(literal, exp.Boolean)
    return False


def _temporal_literal(column_type: str, literal: exp.Expr) -> exp.Expr | None:
    """``TRY(CAST('…' AS <type>))`` for a string literal compared with a date or
    time column: a constant DuckDB folds (NULL when the text is not a date)."""
    if family(column_type) in _TEMPORAL and isinstance(literal, exp.Literal) \
            and literal.is_string:
        return exp.Try(this=exp.Cast(this=literal.copy(), to=exp.DataType.build(column_type)))
    return None


def _column_type(node: exp.Expr, types: Mapping[str, str] | None) -> str | None:
    return type_of(node, types) if isinstance(node, exp.Column) else None


def _total_comparison(node: exp.Expr, types: Mapping[str, str] | None) -> exp.Expr | None:
    """``node`` itself (copied, literals typed) when it is a comparison that cannot
    fail, else ``None``."""
    if isinstance(node, _COMPARISONS):
        left, right = node.this, node.expression
        for column, literal, swap in ((left, right, False), (right, left, True)):
            column_type = _column_type(column, types)
            if column_type is None:
                continue
            if _safe_pair(column_type, literal):
                return node.copy()
            typed = _temporal_literal(column_type, literal)
            if typed is not None:
                out = node.copy()
                out.set("this" if swap else "expression", typed)
                return out
            other = _column_type(literal, types)
            if other is not None and other.upper() == column_type.upper():
                return node.copy()
        return None
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null) \
            and isinstance(node.this, exp.Column):
        return node.copy()
    if isinstance(node, exp.In) and not node.args.get("query") \
            and not node.args.get("unnest") and isinstance(node.this, exp.Column):
        column_type = _column_type(node.this, types)
        if column_type is not None and node.expressions \
                and all(_safe_pair(column_type, e) for e in node.expressions):
            return node.copy()
        return None
    if isinstance(node, exp.Between) and isinstance(node.this, exp.Column):
        column_type = _column_type(node.this, types)
        if column_type is not None and _safe_pair(column_type, node.args["low"]) \
                and _safe_pair(column_type, node.args["high"]):
            return node.copy()
    return None


def _boolean(node: exp.Expr) -> bool:
    """Whether ``node`` is boolean by its form (no cast needed to filter on it)."""
    return isinstance(node, exp.Predicate | exp.Connector | exp.Not | exp.Boolean
                      | exp.Null | exp.Xor)


def make_total(
    expression: exp.Expr,
    *,
    types: Mapping[str, str] | None = None,
    predicate: bool = False,
) -> exp.Expr:
    """A copy of ``expression`` that no row can make raise (see the module doc).

    ``types`` maps column names (lowercase) to their DuckDB types, where the
    plan knows them (a masked column's type is the mask's: leave it out).
    ``predicate`` marks a condition (``WHERE``): its parts are joined by AND, OR
    and NOT as written, and a part that is not boolean by its form is read as
    ``TRY(CAST(… AS BOOLEAN))``, because DuckDB casts a filter to BOOLEAN outside
    any ``TRY`` in it.

    >>> import sqlglot
    >>> def total(sql, **kw):
    ...     return make_total(sqlglot.parse_one(sql, read="duckdb"), **kw).sql("duckdb")
    >>> total("name = 5", types={"name": "VARCHAR"}, predicate=True)
    'TRY(name = 5)'
    >>> total("d >= '2020-01-01' OR NOT flag", types={"d": "DATE", "flag": "BOOLEAN"},
    ...       predicate=True)
    "d >= TRY(CAST('2020-01-01' AS DATE)) OR NOT flag"
    >>> total("name || '!'", predicate=True)
    "TRY(CAST(name || '!' AS BOOLEAN))"
    >>> total("lower(name)")
    'TRY(LOWER(name))'
    """
    if isinstance(expression, exp.And | exp.Or) and predicate:
        return type(expression)(
            this=make_total(expression.this, types=types, predicate=True),
            expression=make_total(expression.expression, types=types, predicate=True),
        )
    if isinstance(expression, exp.Not) and predicate:
        return exp.Not(this=make_total(expression.this, types=types, predicate=True))
    if isinstance(expression, exp.Paren):
        return exp.Paren(this=make_total(expression.this, types=types, predicate=predicate))
    if isinstance(expression, exp.Boolean | exp.Null):
        return expression.copy()
    if isinstance(expression, exp.Column | exp.Literal) and not predicate:
        return expression.copy()
    if isinstance(expression, exp.Column) and predicate \
            and family(type_of(expression, types) or "") == "boolean":
        return expression.copy()
    if predicate:
        safe = _total_comparison(expression, types)
        if safe is not None:
            return safe
        if not _boolean(expression):
            return exp.Try(this=exp.Cast(this=expression.copy(),
                                         to=exp.DataType.build("BOOLEAN")))
    return exp.Try(this=expression.copy())
