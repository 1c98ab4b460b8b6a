"""Keep the time a query takes from saying much about one person (invariant 5).

On a table in ``aggregate`` or ``dp`` mode an analyst sees no rows, so the time a
query takes must not reveal one row's value. A condition on one person can select
an expensive expression (``CASE WHEN name = 'P7' THEN levenshtein(repeat(note, 1500),
…) END``): 1.1 s when true, nothing when false. This rule bounds the work any one
row can cause, with a small cost model, whenever the query reads such a table:

- **superlinear functions** (:data:`SUPERLINEAR`: edit distances and similarities,
  whose time grows with the product of their inputs' lengths) are refused;
- **amplifiers** (:data:`AMPLIFIERS`: ``repeat``, ``lpad``/``rpad``, ``bar``,
  ``range``/``generate_series``, ``list_resize``) make their output larger than
  their input by a size argument: it must be a constant of at most
  :data:`MAX_FACTOR`, and amplifiers nested in one another may multiply a row's
  size by at most :data:`MAX_PRODUCT` in all;
- ``printf``/``format`` take a constant format whose widths are at most
  :data:`MAX_FACTOR`.

Every other allowed function costs time linear in its input, so one row changes a
query's time by at most a bounded number of microseconds. Raw mode, where the rows
themselves are visible, is not limited.

>>> import sqlglot
>>> from policy.access import TableAccess
>>> catalog = {("d", "t"): TableAccess("d", "t", "aggregate")}
>>> tree = sqlglot.parse_one("SELECT count(*) FROM d.t WHERE levenshtein(a, b) > 3",
...                          read="duckdb")
>>> try:
...     check_costs(tree, catalog=catalog)
... except ForbiddenFunctionError as err:
...     print(err.message.split(";")[0])
Function 'levenshtein' takes time that grows with the square of its input
"""

from __future__ import annotations

import re

from sqlglot import exp

from gateway.errors import ForbiddenFunctionError
from policy.functions import function_name
from policy.locate import location
from policy.schema import Catalog, access_for

#: Functions whose time grows faster than the size of their input.
SUPERLINEAR = frozenset({
    "levenshtein", "damerau_levenshtein", "editdist3", "jaccard", "jaro_similarity",
    "jaro_winkler_similarity",
})
#: Functions whose output is larger than their input by a size argument.
AMPLIFIERS = frozenset({"repeat", "lpad", "rpad", "bar", "range", "generate_series",
                        "list_resize", "array_resize"})
#: The largest size argument of one amplifier.
MAX_FACTOR = 256
#: The largest product of the size arguments of amplifiers nested in one another.
MAX_PRODUCT = 4096

_WIDTH = re.compile(r"%[-+ #0]*(\d+)|\{:[^}]*?(\d+)")


def _error(message: str, node: exp.Expr) -> ForbiddenFunctionError:
    line, col = location(node)
    return ForbiddenFunctionError(message, line=line, col=col)


def _size_arguments(node: exp.Func) -> list[exp.Expr]:
    """The arguments of an amplifier that set how much larger its output is."""
    if isinstance(node, exp.Repeat):
        return [node.args["times"]]
    if isinstance(node, exp.Pad):
        return [node.args["expression"]]
    if isinstance(node, exp.GenerateSeries):
        return [a for a in (node.args.get("start"), node.args.get("end")) if a is not None]
    arguments: list[exp.Expr] = list(node.expressions) if isinstance(node, exp.Anonymous) \
        else []
    name = function_name(node)
    if name == "bar":
        return arguments[3:4] or [exp.Literal.number(80)]  # bar's default width is 80
    rest: list[exp.Expr] = list(node.iter_expressions())
    if name in ("list_resize", "array_resize"):
        return arguments[1:2]
    return rest[1:2]


def _constant(node: exp.Expr) -> float | None:
    if isinstance(node, exp.Neg):
        inner = _constant(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Paren):
        return _constant(node.this)
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return float(node.name)
        except ValueError:  # pragma: no cover - sqlglot only makes numbers here
            return None
    return None


def _factor(node: exp.Func, name: str) -> float:
    factor = 1.0
    for argument in _size_arguments(node):
        value = _constant(argument)
        if value is None:
            raise _error(
                f"The size argument of '{name}' must be a number written in the query, "
                "not computed from the data: on tables in aggregate or dp mode the time a "
                "query takes must not depend on one person's values", argument)
        factor = max(factor, abs(value))
    if factor > MAX_FACTOR:
        raise _error(f"'{name}' may make a value at most {MAX_FACTOR} times larger on tables "
                     f"in aggregate or dp mode, not {factor:g} times", node)
    return factor


def _check_format(node: exp.Func, name: str) -> None:
    arguments = list(node.iter_expressions())
    first = arguments[0] if arguments else None
    if not (isinstance(first, exp.Literal) and first.is_string):
        raise _error(f"The format of '{name}' must be text written in the query on tables "
                     "in aggregate or dp mode", first if first is not None else node)
    for match in _WIDTH.finditer(first.name):
        width = int(match.group(1) or match.group(2))
        if width > MAX_FACTOR:
            raise _error(f"A width in the format of '{name}' may be at most {MAX_FACTOR} on "
                         "tables in aggregate or dp mode", first)


def _reads_protected(expression: exp.Expr, catalog: Catalog) -> bool:
    for table in expression.find_all(exp.Table):
        if table.db and access_for(catalog, table).mode != "raw":
            return True
    return False


def check_costs(expression: exp.Expr, *, catalog: Catalog, **_: object) -> exp.Expr:
    """Raise :class:`ForbiddenFunctionError` for work one row could make large (module doc)."""
    if not _reads_protected(expression, catalog):
        return expression
    for node in expression.find_all(exp.Func):
        name = function_name(node)
        if name in SUPERLINEAR:
            raise _error(
                f"Function '{name}' takes time that grows with the square of its input; on "
                "tables in aggregate or dp mode the time a query takes must not depend on "
                "one person's values, so it is not allowed there", node)
        if name in ("printf", "format"):
            _check_format(node, name)
        if name not in AMPLIFIERS:
            continue
        product = _factor(node, name)
        for outer in _amplifying_ancestors(node):
            product *= _factor(outer, function_name(outer))
        if product > MAX_PRODUCT:
            raise _error(f"Nested '{name}' calls may make a value at most {MAX_PRODUCT} times "
                         "larger on tables in aggregate or dp mode", node)
    return expression


def _amplifying_ancestors(node: exp.Expr) -> list[exp.Func]:
    found = []
    parent = node.parent
    while parent is not None:
        if isinstance(parent, exp.Func) and function_name(parent) in AMPLIFIERS:
            found.append(parent)
        parent = parent.parent
    return found
