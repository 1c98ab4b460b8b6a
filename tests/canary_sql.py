"""Canary values, how to find them in what an analyst sees, and analyst SQL that digs for them.

The test domain of ``tests/test_error_canaries.py`` keeps :data:`CANARIES` in columns an
analyst may not read: rows a row filter removes, masked and hidden columns, people in
groups too small to release, an ENUM type's dictionary. :func:`leaks` finds any of them
(or a disguise of one: digits turned into letters with ``translate()``, reversed, hex) in
a text; :func:`queries` draws analyst SQL over the protected columns from a small
grammar, biased towards DuckDB functions whose errors echo their input.

>>> leaks("Unknown TimeZone 'CANARY/Zone-987654'")
['canary', '987654', 'zone-']
>>> leaks("Could not convert string 'jihgfe' to INT32")
['jihgfe']
>>> leaks("A value could not be converted to the type your query needs, on some row.")
[]
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

# -------------------------------------------------------------------------- canaries

#: The digits every numeric canary holds, and the number itself.
DIGITS = "987654"
NUMBER = 987654
#: A BIGINT that overflows when doubled (its text holds :data:`DIGITS`).
BIG = 9187654321987654321
FRACTION = 987654.5
DATE = datetime.date(1876, 5, 4)

#: The protected values, by column. Each holds the word CANARY and :data:`DIGITS`, and
#: some are built to be echoed by DuckDB: an unknown time zone, a regular expression
#: that does not compile, a string that is not a number, a date part that does not exist.
CANARIES: dict[str, str] = {
    "site": "CANARY-SITE-987654",
    "diag": "CANARY-RARE-DIAG/987654",
    "tz": "CANARY/Zone-987654",
    "pattern": "CANARY-RX x(987654",
    "code": "CANARY-CODE-987654",
    "note": "CANARY-NOTE-987654",
    "kind": "CANARY-KIND-987654",
    "ssn": "CANARY-SSN-987654",
    "secret": "CANARY-SECRET-987654",
}

#: Digit-to-letter translations the grammar uses (``translate(x, '0123456789', …)``).
TRANSLATIONS = ("abcdefghij", "ABCDEFGHIJ", "klmnopqrst")


def _translated(text: str, letters: str) -> str:
    return text.translate(str.maketrans("0123456789", letters))


def _markers() -> tuple[str, ...]:
    """Lowercased pieces no analyst-visible text may hold."""
    pieces = {"canary", "yranac", DIGITS,
              "43414e415259", "q0foqvjz",  # CANARY in hex and in base64
              str(BIG)[:10], DATE.isoformat(), DATE.strftime("%Y%m%d"),
              "rare-diag", "zone-", "rx x("}
    # (Reversed digit runs are not markers: every translate() call holds '0123456789'.)
    for letters in TRANSLATIONS:
        pieces.add(_translated(DIGITS, letters).lower())
    return tuple(sorted(pieces, key=lambda p: (p != "canary", p)))


MARKERS = _markers()
#: Markers of the canary strings only (the word and its disguises), not of numbers.
WORD_MARKERS = tuple(m for m in MARKERS if not any(c.isdigit() for c in m)
                     and m not in {_translated(DIGITS, t).lower() for t in TRANSLATIONS})


def leaks(text: str, markers: tuple[str, ...] = MARKERS) -> list[str]:
    """The markers of a canary that ``text`` holds (case-insensitive), in a stable order."""
    lowered = text.lower()
    return [m for m in markers if m in lowered]


def _cells(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [c for v in value.values() for c in _cells(v)]
    if isinstance(value, list | tuple):
        return [c for v in value for c in _cells(v)]
    return [value]


def answer_leaks(rows: list[dict[str, Any]], *, exact: bool) -> list[str]:
    """What of a canary an answer's cells hold.

    ``exact``: the mode releases no aggregate of protected values (raw mode over the
    visible rows), so no number, date or string may equal or hold a canary. Otherwise
    (aggregate and dp modes release aggregates over everyone, canaries included) only
    the canary strings are checked: such a cell can only be a released group's key or
    built from one, and no group of the canaries' people is large enough to release.
    """
    found: list[str] = []
    for row in rows:
        for cell in _cells(row):
            if isinstance(cell, str | bytes):
                text = cell.decode(errors="replace") if isinstance(cell, bytes) else cell
                found += leaks(text, MARKERS if exact else WORD_MARKERS)
            elif isinstance(cell, datetime.datetime | datetime.date):
                if (cell.date() if isinstance(cell, datetime.datetime) else cell) == DATE:
                    found.append(DATE.isoformat())
            elif exact and isinstance(cell, int | float | Decimal) \
                    and not isinstance(cell, bool) and cell in (NUMBER, BIG, FRACTION):
                found.append(str(cell))
    return found


# ------------------------------------------------------------------------- the grammar

#: Literals shaped like the canaries (a code, a pattern, a zone, a number) but none of
#: them: a bind error may echo the analyst's own SQL, which must then hold no marker.
STRING_LITERALS = ("'RARE/123'", "'x('", "'Mars/Olympus'", "'12a'", "'[z-a'", "'%Y-%m-%d'",
                   "'%Y'", "'{:>8}'", "'%d'", "'north'", "'flu'", "''", "'UTC'", "'a+'",
                   "'1e999'", "'2024-02-30'", "'{}'", "'$.a'", "'year'", "'nonsense'")
NUMBER_LITERALS = ("0", "1", "2", "-1", "3.5", "100", "2147483647", "9223372036854775807")


@dataclass(frozen=True)
class Columns:
    """The columns a role's table offers, by type (``refused``: not in the role's schema)."""

    strings: tuple[str, ...]
    numbers: tuple[str, ...] = ("age", "amount", "score")
    dates: tuple[str, ...] = ("visit",)
    refused: tuple[str, ...] = ("pid", "secret")


RAW_COLUMNS = Columns(strings=("site", "diag", "tz", "pattern", "code", "kind", "ssn"),
                      refused=("pid", "secret", "note"))
PROTECTED_COLUMNS = Columns(strings=("site", "diag", "tz", "pattern", "code", "kind", "note"),
                            refused=("pid", "secret", "ssn"))


@dataclass(frozen=True)
class Query:
    """Analyst SQL with ``{t}`` (the protected table) and ``{s}`` (the sites table)."""

    template: str
    parameters: tuple[Any, ...] | None = None
    grouped: bool = True
    tags: tuple[str, ...] = field(default=())

    def sql(self, table: str, sites: str) -> str:
        return self.template.replace("{t}", table).replace("{s}", sites)


#: Conditions true for the canaries' people only: an attacker's way to aim a failing
#: function at one person's value (``CASE WHEN <that person> THEN f(col) END``).
RARE_CONDITIONS = ("t.age > 1000", "t.amount > 1000000", "t.visit < DATE '1900-01-01'",
                   "t.site LIKE 'CA%'", "length(t.diag) > 12")


def _weighted(*choices: tuple[int, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """One of the strategies, each ``weight`` times as likely as a strategy of weight 1.

    (``st.one_of`` flattens and deduplicates its arguments: repeating one weighs nothing.)
    """
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


@functools.cache
def _column(cols: Columns, kind: str) -> st.SearchStrategy[str]:
    names = {"s": cols.strings, "n": cols.numbers, "d": cols.dates}[kind]
    plain = st.sampled_from(names).map(lambda c: f"t.{c}")
    # The other rows get NULL, which every function here passes through without failing.
    aimed = st.tuples(st.sampled_from(RARE_CONDITIONS), plain).map(
        lambda p: f"CASE WHEN {p[0]} THEN {p[1]} END")
    # Now and then a column the role may not read: refused, with no value in the message.
    refused = st.sampled_from(cols.refused).map(lambda c: f"t.{c}")
    return _weighted((10, plain), (10, aimed), (1, refused))


@functools.cache
def _string(cols: Columns, depth: int) -> st.SearchStrategy[str]:
    base = _weighted((2, _column(cols, "s")), (1, st.sampled_from(STRING_LITERALS)))
    if depth <= 0:
        return base
    s = _string(cols, depth - 1)
    n = _number(cols, depth - 1)
    d = _date(cols, depth - 1)
    lit = st.sampled_from(STRING_LITERALS)
    # Functions whose errors (or answers) would show their input or its type.
    echoing = st.one_of(
        st.builds("typeof({})".format, s),
        st.builds("regexp_extract({}, {})".format, s, s),
        st.builds("format({}, {})".format, s, n),
        st.builds("printf('%d', {})".format, s),
        st.builds("printf({}, {})".format, s, s),
        st.builds("strftime({}, {})".format, d, s),
        st.builds("json_extract_string({}, {})".format, s, s),
        st.builds("CAST(timezone({}, TIMESTAMP '2024-01-01 00:00:00') AS VARCHAR)".format, s),
        st.builds("CAST(CAST({} AS JSON) AS VARCHAR)".format, s),
        st.builds("regexp_replace({}, {}, 'y')".format, s, s),
    )
    translate = st.tuples(s, st.sampled_from(TRANSLATIONS)).map(
        lambda p: f"translate({p[0]}, '0123456789', '{p[1]}')")
    plain = st.one_of(
        translate,
        st.builds("({} || {})".format, s, s),
        st.builds("upper({})".format, s),
        st.builds("reverse({})".format, s),
        st.builds("substr({}, 2, 5)".format, s),
        st.builds("replace({}, {}, 'y')".format, s, lit),
        st.builds("format('{{}}-{{}}', {}, {})".format, s, n),
        st.builds("strftime({}, '%Y')".format, d),
        st.builds("CAST({} AS VARCHAR)".format, n),
        st.builds("CAST({} AS VARCHAR)".format, d),
        st.builds("split_part({}, {}, 2)".format, s, lit),
        st.builds("hex({})".format, s),
        st.builds("to_base64(CAST({} AS BLOB))".format, s),
    )
    return _weighted((1, base), (2, echoing), (1, plain))


@functools.cache
def _number(cols: Columns, depth: int) -> st.SearchStrategy[str]:
    base = _weighted((2, _column(cols, "n")), (1, st.sampled_from(NUMBER_LITERALS)))
    if depth <= 0:
        return base
    s = _string(cols, depth - 1)
    n = _number(cols, depth - 1)
    d = _date(cols, depth - 1)
    echoing = st.one_of(
        st.builds("CAST({} AS INTEGER)".format, s),
        st.builds("{}::BIGINT".format, s),
        st.builds("CAST({} AS DECIMAL(4, 1))".format, s),
        st.builds("({} + 1)".format, s),  # no such function: a binder error naming types
        st.builds("date_part({}, {})".format, s, d),
        st.builds("datediff({}, {}, DATE '2024-01-01')".format, s, d),
        st.builds("CAST({} AS TINYINT)".format, n),
        st.builds("CAST({} AS DECIMAL(4, 1))".format, n),
        st.builds("({} * 9223372036854775807)".format, n),
        st.builds("ln({})".format, n),
        st.builds("sqrt({} - 50)".format, n),
        st.builds("pow({}, 40)".format, n),
    )
    plain = st.one_of(
        st.builds("({} + {})".format, n, n),
        st.builds("({} * {})".format, n, n),
        st.builds("({} - {})".format, n, n),
        st.builds("({} / {})".format, n, n),
        st.builds("({} // {})".format, n, n),
        st.builds("TRY_CAST({} AS DOUBLE)".format, s),
        st.builds("length({})".format, s),
        st.builds("strpos({}, 'x')".format, s),
        st.builds("year({})".format, d),
        st.builds("TRY({})".format, n),
    )
    return _weighted((1, base), (2, echoing), (1, plain))


@functools.cache
def _date(cols: Columns, depth: int) -> st.SearchStrategy[str]:
    base = st.one_of(_column(cols, "d"), st.just("DATE '2021-06-01'"))
    if depth <= 0:
        return base
    s = _string(cols, depth - 1)
    n = _number(cols, depth - 1)
    return st.one_of(
        base,
        st.builds("CAST({} AS DATE)".format, s),
        st.builds("TRY_CAST({} AS DATE)".format, s),
        st.builds("CAST(strptime({}, '%Y-%m-%d') AS DATE)".format, s),
        st.builds("CAST(strptime({}, {}) AS DATE)".format, s, s),
        st.builds("make_date(2020, {}, 1)".format, n),
        st.builds("date_trunc({}, {})".format, s, _column(cols, "d")),
        st.builds("CAST(({} + INTERVAL 3 DAY) AS DATE)".format, _column(cols, "d")),
    )


@functools.cache
def _boolean(cols: Columns, depth: int) -> st.SearchStrategy[str]:
    s = _string(cols, depth)
    n = _number(cols, depth)
    d = _date(cols, depth)
    return st.one_of(
        st.builds("regexp_matches('x', {} || '(')".format, s),
        st.builds("regexp_matches({}, {})".format, s, s),
        st.builds("{} ~ {}".format, s, s),
        st.builds("timezone({}, TIMESTAMPTZ '2024-01-01 00:00:00+00') IS NOT NULL".format, s),
        st.builds("({} = {})".format, s, s),
        st.builds("({} > {})".format, n, n),
        st.builds("({} <= {})".format, n, st.sampled_from(NUMBER_LITERALS)),
        st.builds("({} < {})".format, d, d),
        st.builds("{} LIKE 'CA%'".format, s),
        st.builds("contains({}, {})".format, s, s),
        st.builds("{} IN ('north', 'flu', 'x(')".format, s),
        st.builds("({} BETWEEN 1 AND 50)".format, n),
        st.builds("(CASE WHEN {} THEN CAST({} AS INTEGER) ELSE 0 END = 0)".format,
                  st.sampled_from(RARE_CONDITIONS), s),
        st.just("t.withheld"),
    )


_AGGREGATES = ("count({})", "sum({})", "avg({})", "stddev({})")


@functools.cache
def _aggregate(cols: Columns, depth: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just("count(*)"),
        st.builds("count({})".format, _string(cols, depth)),
        st.tuples(st.sampled_from(_AGGREGATES), _number(cols, depth)).map(
            lambda p: p[0].format(p[1])),
        st.builds("sum(t.{})".format, st.sampled_from(cols.numbers)),
        st.builds("avg(t.{})".format, st.sampled_from(cols.numbers)),
    )


#: HAVING conditions that fail on a small group: aggregate mode must never evaluate
#: them there (the groups of the canaries' people are below the threshold).
FAILING_ON_SMALL_GROUPS = (
    "CAST(CASE WHEN count(*) < 4 THEN {key} ELSE '1' END AS INTEGER) = 1",
    "ln(count(*) - 3) >= 0",
    "regexp_matches('x', CASE WHEN count(*) < 4 THEN {key} || '(' ELSE 'x' END)",
    "timezone(CASE WHEN count(*) < 4 THEN {key} ELSE 'UTC' END, "
    "TIMESTAMPTZ '2024-01-01 00:00:00+00') IS NOT NULL",
)


@st.composite
def queries(draw: st.DrawFn, cols: Columns, *, raw: bool, depth: int = 2) -> Query:
    """One analyst query over ``{t}`` (alias ``t``), sometimes joined with ``{s}``."""
    tags: list[str] = []
    grouped = not raw or draw(st.booleans())
    join = draw(st.integers(0, 5)) == 0
    source = "{t} AS t"
    if join:
        source += " JOIN {s} AS s ON s.site = t.site"
        tags.append("join")
    where = ""
    parameters: tuple[Any, ...] | None = None
    if draw(st.integers(0, 2)) == 0:
        where = " WHERE " + draw(_boolean(cols, depth))
    if draw(st.integers(0, 7)) == 0:
        value = draw(st.sampled_from((30, "x(", "2024-01-01", 2.5)))
        where = (where + " AND" if where else " WHERE") + " CAST(? AS VARCHAR) <> t.code"
        parameters = (value,)
        tags.append("parameter")
    if grouped:
        key_column = draw(st.sampled_from((*cols.strings, *cols.dates, "age")))
        key = draw(st.one_of(st.just(f"t.{key_column}"), _string(cols, 1)))
        aggregates = draw(st.lists(_aggregate(cols, depth - 1), min_size=1, max_size=3))
        select = ", ".join([f"{key} AS k", *(f"{a} AS a{i}" for i, a in enumerate(aggregates))])
        sql = f"SELECT {select} FROM {source}{where} GROUP BY 1"
        if draw(st.booleans()):
            having = draw(st.one_of(
                st.sampled_from(FAILING_ON_SMALL_GROUPS).map(
                    lambda h: h.format(key=f"CAST({key} AS VARCHAR)")),
                st.builds("{} > {}".format, _aggregate(cols, 1), st.sampled_from(NUMBER_LITERALS)),
            ))
            sql += f" HAVING {having}"
            tags.append("having")
        if draw(st.booleans()):
            sql += draw(st.sampled_from((" ORDER BY 1", " ORDER BY 2 DESC", " ORDER BY 1 LIMIT 3")))
    else:
        items = draw(st.lists(st.one_of(_string(cols, depth), _number(cols, depth),
                                        _date(cols, depth)), min_size=1, max_size=3))
        select = ", ".join(f"{item} AS c{i}" for i, item in enumerate(items))
        sql = f"SELECT {select} FROM {source}{where}"
        sql += draw(st.sampled_from(("", " ORDER BY 1", " LIMIT 7", " ORDER BY 1 DESC LIMIT 5")))
    assert not leaks(sql), sql  # the analyst's own SQL holds no marker
    return Query(sql, parameters, grouped, tuple(tags))
