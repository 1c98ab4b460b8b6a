"""What a sqlglot expression runs in DuckDB, and the types the plan knows.

sqlglot reads many spellings into one typed expression and writes it back in its
own way (``datediff('day', a, b)`` is ``DATE_DIFF('DAY', a, b)``, ``EXTRACT(epoch
FROM ts)`` is DuckDB's ``date_part``): :func:`duckdb_call` names the function
DuckDB will run and its arguments in DuckDB's order. :func:`type_of` and
:func:`family` give an expression's type where the plan knows it (columns of the
schema, casts, literals).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from sqlglot import exp


def duckdb_call(node: exp.Expr) -> tuple[str, list[exp.Expr | None]] | None:
    """The DuckDB function (or SQL form) ``node`` runs, with its arguments in
    DuckDB's order; ``None`` for a node that is not a call.

    An argument sqlglot writes itself (``DATE_DIFF('DAY', a, b)`` from a unit) is
    returned as the literal it writes; ``None`` for an argument that is not an
    expression on its own.

    >>> import sqlglot
    >>> name, args = duckdb_call(sqlglot.parse_one("datediff('day', a, b)", read="duckdb"))
    >>> name, [a.sql("duckdb") for a in args]
    ('date_diff', ["'DAY'", 'a', 'b'])
    >>> duckdb_call(sqlglot.parse_one("ts AT TIME ZONE z", read="duckdb"))[0]
    'AT TIME ZONE'
    """
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower(), list(node.expressions)
    if isinstance(node, exp.AtTimeZone):
        return "AT TIME ZONE", [node.this, node.args.get("zone")]
    if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like | exp.ILike):
        form = "LIKE ESCAPE" if isinstance(node.this, exp.Like) else "ILIKE ESCAPE"
        return form, [node.this.this, node.expression]
    if isinstance(node, exp.Extract):
        part = node.this
        name = part.name if isinstance(part, exp.Var | exp.Identifier | exp.Column) else None
        if name is None and isinstance(part, exp.Literal):
            name = part.name
        literal: exp.Expr | None = (exp.Literal.string(name.lower()) if name is not None
                                    else part)
        return "date_part", [literal, node.expression]
    if not isinstance(node, exp.Func):
        return None
    return _generated_call(node)


_CALL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$", re.DOTALL)


def _generated_call(node: exp.Func) -> tuple[str, list[exp.Expr | None]] | None:
    """The call sqlglot writes for ``node``, each argument read back from that text
    (sqlglot writes some arguments its own way: a unit as a string, a time zone as a
    bare name, which DuckDB then reads as a column). An argument that is the text
    of one of ``node``'s children is that child (for its position in the SQL)."""
    try:
        sql = node.sql(dialect="duckdb")
    except Exception:  # a node sqlglot cannot write alone  # noqa: BLE001
        return None
    match = _CALL.match(sql.strip())
    if match is None:
        return None
    children: dict[str, exp.Expr] = {}
    for child in node.iter_expressions():
        try:
            children.setdefault(child.sql(dialect="duckdb").lower(), child)
        except Exception:  # noqa: BLE001
            continue
    args: list[exp.Expr | None] = []
    for text in _split_arguments(match.group(2)):
        parsed = _parse_argument(text)
        same = children.get(text.lower())
        if same is not None and parsed is not None and type(same) is type(parsed):
            args.append(same)
        else:
            args.append(parsed)
    return match.group(1).lower(), args


def _parse_argument(text: str) -> exp.Expr | None:
    import sqlglot

    try:
        return sqlglot.parse_one(text, read="duckdb")
    except Exception:  # not an expression on its own  # noqa: BLE001
        return None


def _split_arguments(text: str) -> Iterator[str]:
    """Top-level comma-separated parts of ``text`` (quotes and brackets respected)."""
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            yield text[start:i].strip()
            start = i + 1
    if text.strip():
        yield text[start:].strip()


# -- types, as far as the plan knows them


def type_of(node: exp.Expr | None, types: Mapping[str, str] | None) -> str | None:
    """The DuckDB type of ``node`` when the plan knows it, else ``None``.

    >>> import sqlglot
    >>> type_of(sqlglot.parse_one("CAST(x AS DATE)", read="duckdb"), None)
    'DATE'
    >>> type_of(sqlglot.parse_one("age", read="duckdb"), {"age": "BIGINT"})
    'BIGINT'
    """
    if node is None:
        return None
    if isinstance(node, exp.Paren):
        return type_of(node.this, types)
    if isinstance(node, exp.Column):
        return (types or {}).get(node.name.lower())
    if isinstance(node, exp.Cast):  # also TRY_CAST
        return node.to.sql(dialect="duckdb").upper()
    if isinstance(node, exp.Literal):
        if node.is_string:
            return "VARCHAR"
        return "INTEGER" if node.is_int else "DOUBLE"
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        return type_of(node.this, types)
    if isinstance(node, exp.Boolean):
        return "BOOLEAN"
    if isinstance(node, exp.Interval):
        return "INTERVAL"
    if isinstance(node, exp.Try):
        return type_of(node.this, types)
    return None


_FAMILIES = (
    (re.compile(r".*(\[\d*\]|^LIST|^ARRAY)"), "list"),
    (re.compile(r"^STRUCT"), "struct"),
    (re.compile(r"^MAP"), "map"),
    (re.compile(r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?\d*|LONG|SHORT|INT\d)$"), "integer"),
    (re.compile(r"^(FLOAT\d*|DOUBLE|REAL|DECIMAL.*|NUMERIC.*)"), "number"),
    (re.compile(r"^(VARCHAR.*|TEXT|STRING|CHAR.*|BPCHAR|JSON|UUID)"), "string"),
    (re.compile(r"^BOOL(EAN)?$"), "boolean"),
    (re.compile(r"^(TIMESTAMP WITH TIME ZONE|TIMESTAMPTZ)$"), "timestamptz"),
    (re.compile(r"^(TIMESTAMP|DATETIME)"), "timestamp"),
    (re.compile(r"^DATE$"), "date"),
    (re.compile(r"^(TIME WITH TIME ZONE|TIMETZ)$"), "timetz"),
    (re.compile(r"^TIME"), "time"),
    (re.compile(r"^INTERVAL"), "interval"),
    (re.compile(r"^(BLOB|BYTEA|VARBINARY|BIT)"), "blob"),
)

#: Families a value of the key family may be implicitly cast to.
_CASTS_TO = {
    "integer": {"integer", "number"},
    "number": {"number"},
    "date": {"date", "timestamp", "timestamptz"},
    "timestamp": {"timestamp", "timestamptz"},
    "time": {"time", "timetz"},
}


def family(type_: str) -> str:
    """The broad kind of a DuckDB type name.

    >>> family("DECIMAL(18,3)"), family("TIMESTAMP WITH TIME ZONE"), family("BIGINT[]")
    ('number', 'timestamptz', 'list')
    """
    upper = type_.upper().strip()
    for pattern, name in _FAMILIES:
        if pattern.match(upper):
            return name
    return "other"


def may_bind(known: str | None, parameter: str) -> bool:
    """Whether a value of type ``known`` (``None``: unknown) may bind to ``parameter``."""
    if known is None or parameter == "LAMBDA":
        return True
    have, want = family(known), family(parameter)
    if have in ("string", "other") or want == "other":
        return True  # strings are cast to anything; unknown kinds are not ruled out
    return want in _CASTS_TO.get(have, {have})
