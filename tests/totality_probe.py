"""Which allowed functions can raise an error that ``TRY(...)`` does not catch.

The table :data:`policy.totality.ESCAPES_TRY` is built from this probe, and
``tests/test_policy_totality.py`` runs it again so that a DuckDB upgrade that
changes the answer fails the suite. Run it by hand to see the table::

    python -m tests.totality_probe

For every DuckDB scalar function an analyst can reach (the allow-list of
:mod:`policy.functions`, the functions sqlglot's typed expressions generate, and
the operators), every overload and every argument position, it evaluates
``TRY(f(...))`` with that argument read from a column of adversarial values
(NULL, empty and very long strings, bad patterns and formats, unknown time
zones, malformed dates, NaN and infinities, extreme and negative numbers, …)
and the other arguments from a column of ordinary values. A failure is
*bind time* (data-independent: the same with no rows, seen with ``LIMIT 0``) or
an *escape*: raised while rows are evaluated, through ``TRY``. Each argument is
probed twice: read from a column, and written as a literal (a literal that
fails is only evaluated when some row reaches it, so its error depends on the
data too). DuckDB runs as the engine configures it, with the optimizers of
:data:`policy.totality.DISABLED_OPTIMIZERS` off.

Write the table :mod:`policy.totality` reads with::

    python -m tests.totality_probe --table > policy/totality_table.py

An escape that runs out of memory (``repeat`` with a count of 10^9) needs an
address-space limit to show as an error: run it under ``ulimit -v 6000000``.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError

from policy.functions import ALLOWED_EXPRESSIONS, ALLOWED_FUNCTION_NAMES
from policy.totality import DISABLED_OPTIMIZERS, Escape

#: The date parts DuckDB accepts (date_part, date_diff, date_trunc, ...), with
#: their plural and short spellings.
DATE_PARTS = (
    "century", "centuries", "day", "days", "d", "dayofmonth", "dayofweek", "dow",
    "dayofyear", "doy", "decade", "decades", "epoch", "era", "hour", "hours", "h", "hr",
    "isodow", "isoyear", "julian", "microsecond", "microseconds", "us", "millennium",
    "millennia", "millisecond", "milliseconds", "ms", "minute", "minutes", "min", "m",
    "month", "months", "mon", "nanosecond", "nanoseconds", "ns", "quarter", "quarters",
    "second", "seconds", "s", "sec", "timezone", "timezone_hour", "timezone_minute",
    "week", "weeks", "w", "weekday", "weekofyear", "year", "years", "y", "yr", "yearweek",
)  # fmt: skip

#: Adversarial values by DuckDB type, as SQL literals (TRY_CAST drops the ones a
#: type cannot hold).
_STRINGS = [
    "NULL", "''", "'CANARY-RARE-DIAG/987654'", "'('", "')'", "'['", "'*'", "'\\'", "'%'",
    "'%Q'", "'%-'", "'%s%s%s%s'", "'%d'", "'{'", "'}'", "'{:d}'", "'{0:.400}'", "'Bad/Zone'",
    "'not a date'", "'2020-13-45'", "'NaN'", "'inf'", "'-1'", "'0'", "'1e400'",
    "'99999999999999999999999999999'", "repeat('x', 5000)", "'abc'", "'décès'", "chr(0)",
    "'{\"a\":'", "'[1,2'", "'null'", "'$.a['", "'  '", "'epoch'", "'century'", "'yearz'",
    "'ab' || chr(0) || 'cd'", "'0x'", "'=='", "'AAAA'", "'%Y-%m-%d'", "'\\x'", "'UTC'",
    "'utc'", "'+01:00'", "'Europe/Paris'", "'i'", "'ASC'", "'min'",
    # every date part DuckDB knows, each valid for some types and not others
    *(f"'{part}'" for part in DATE_PARTS),
]  # fmt: skip
_INTEGERS = [
    "NULL", "0", "1", "-1", "2", "-2", "100", "1000000", "-1000000", "2147483647",
    "-2147483648", "9223372036854775807", "-9223372036854775808", "4294967296",
    "170141183460469231731687303715884105727", "-170141183460469231731687303715884105728",
    "1000000000",
    "340282366920938463463374607431768211455", "255", "-128", "65535",
]  # fmt: skip
_FLOATS = [
    "NULL", "0", "'-0.0'", "1", "-1", "0.5", "-0.5", "1e308", "-1e308", "'nan'", "'inf'",
    "'-inf'", "5e-324", "1e18", "1e19", "1e40", "100", "-100",
]  # fmt: skip
_DATES = [
    "NULL", "'infinity'", "'-infinity'", "'5877642-06-25'", "'5877642-06-25 (BC)'",
    "'1970-01-01'", "'2020-02-29'", "'0001-01-01'", "'9999-12-31'",
]  # fmt: skip
_TIMESTAMPS = [
    "NULL", "'infinity'", "'-infinity'", "'294247-01-10 04:00:54.775806'",
    "'290309-12-22 (BC) 00:00:00'", "'1970-01-01'", "'2020-02-29 23:59:59.999999'",
    "'1677-09-22 00:00:00'", "'2262-04-11 23:47:16'",
]  # fmt: skip
_VALUES: dict[str, list[str]] = {
    "VARCHAR": _STRINGS,
    "BIGINT": _INTEGERS, "INTEGER": _INTEGERS, "SMALLINT": _INTEGERS, "TINYINT": _INTEGERS,
    "HUGEINT": _INTEGERS, "UBIGINT": _INTEGERS, "UINTEGER": _INTEGERS,
    "USMALLINT": _INTEGERS, "UTINYINT": _INTEGERS, "UHUGEINT": _INTEGERS,
    "DOUBLE": _FLOATS, "FLOAT": _FLOATS,
    "DECIMAL": ["NULL", "0", "-1", "0.001", "999999999999999.999", "-999999999999999.999"],
    "DATE": _DATES,
    "TIMESTAMP": _TIMESTAMPS, "TIMESTAMP WITH TIME ZONE": _TIMESTAMPS,
    "TIMESTAMP_NS": _TIMESTAMPS,
    "TIME": ["NULL", "'00:00:00'", "'23:59:59.999999'", "'24:00:00'"],
    "TIME_NS": ["NULL", "'00:00:00'", "'23:59:59.999999'", "'24:00:00'"],
    "TIME WITH TIME ZONE": ["NULL", "'00:00:00+15:59'", "'24:00:00-15:59'", "'12:00:00'"],
    "INTERVAL": [
        "NULL", "'0 days'", "'1 day'", "'-1 day'", "'2147483647 days'",
        "'-2147483648 days'", "'2147483647 months'", "'-2147483648 months'",
        "'9223372036854775807 microseconds'", "'178000000 years'",
    ],
    "BOOLEAN": ["NULL", "true", "false"],
    "BLOB": ["NULL", "''", "'\\xFF\\xFE'::BLOB", "'\\x00'::BLOB", "'CANARY'::BLOB",
             "repeat('x', 5000)::BLOB"],
    "BIT": ["NULL", "'0'", "repeat('1', 100)", "'1'"],
    "VARCHAR[]": ["NULL", "[]", "[NULL]", "['CANARY-RARE-DIAG/987654', '(', '']",
                  "list_transform(range(1000), x -> x::VARCHAR)"],
    "BIGINT[]": ["NULL", "[]", "[NULL]", "[9223372036854775807, 1]",
                 "[-9223372036854775808, -1]", "range(1000)"],
    "BIGINT[][]": ["NULL", "[]", "[NULL]", "[[]]", "[[9223372036854775807, NULL]]"],
    "DOUBLE[]": ["NULL", "[]", "[NULL]", "['nan'::DOUBLE, 'inf', 1e308]"],
    "MAP(VARCHAR, BIGINT)": ["NULL", "MAP {}", "MAP {'a': 9223372036854775807, '(': NULL}"],
    "STRUCT(a BIGINT)": ["NULL", "{'a': NULL}", "{'a': 9223372036854775807}"],
    "STRUCT(\"year\" BIGINT, \"month\" BIGINT, \"day\" BIGINT)": [
        "NULL", "{'year': 9223372036854775807, 'month': 13, 'day': -1}",
        "{'year': 2020, 'month': 2, 'day': 30}"],
    "UUID": ["NULL", "'00000000-0000-0000-0000-000000000000'"],
}  # fmt: skip

#: Ordinary values per type, for the arguments not under test. The probe uses
#: the first combination with which the call runs (a time zone argument needs
#: 'UTC', a JSON path '$.a', a date part 'day').
_TYPICAL: dict[str, tuple[str, ...]] = {
    "VARCHAR": ("'abc'", "'UTC'", "'$.a'", "'day'", "'%Y'", "'{\"a\": 1}'", "'1'", "'a'",
                "'2020-01-02'", "'ab'", "'i'", "'ASC'", "'min'"),
    **{t: ("3", "1", "0", "2") for t in (
        "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER",
        "USMALLINT", "UTINYINT", "UHUGEINT")},
    "DOUBLE": ("1.5", "0.5", "3"), "FLOAT": ("1.5", "0.5", "3"), "DECIMAL": ("1.5", "0.5"),
    "DATE": ("'2020-01-02'",), "TIMESTAMP": ("'2020-01-02 03:04:05'",),
    "TIMESTAMP WITH TIME ZONE": ("'2020-01-02 03:04:05'",),
    "TIMESTAMP_NS": ("'2020-01-02'",), "TIME": ("'03:04:05'",), "TIME_NS": ("'03:04:05'",),
    "TIME WITH TIME ZONE": ("'03:04:05+01'",), "INTERVAL": ("'1 day'", "'1 month'"),
    "BOOLEAN": ("true", "false"), "BLOB": ("'abc'::BLOB", "'\\x01\\x02'::BLOB"),
    "BIT": ("'101'", "'1'"),
    "VARCHAR[]": ("['a', 'b']", "['a']", "['year', 'month']"), "BIGINT[]": ("[1, 2, 3]", "[1]"),
    "BIGINT[][]": ("[[1], [2, 3]]",), "DOUBLE[]": ("[1.5, 2.5]",),
    "MAP(VARCHAR, BIGINT)": ("MAP {'a': 1}",), "STRUCT(a BIGINT)": ("{'a': 1}",),
    "STRUCT(\"year\" BIGINT, \"month\" BIGINT, \"day\" BIGINT)":
        ("{'year': 2020, 'month': 1, 'day': 2}",),
    "UUID": ("'00000000-0000-0000-0000-000000000001'",),
}  # fmt: skip

#: DuckDB parameter types the probe reads through a concrete type (templates,
#: JSON, which analysts reach with VARCHAR columns, …).
_CONCRETE: dict[str, tuple[str, ...]] = {
    "ANY": ("VARCHAR", "BIGINT", "BIGINT[]"), "T": ("BIGINT",), "K": ("VARCHAR",), "V": ("BIGINT",),
    "ANY[]": ("BIGINT[]", "VARCHAR[]"), "T[]": ("BIGINT[]",), "K[]": ("VARCHAR[]",),
    "V[]": ("BIGINT[]",), "T[][]": ("BIGINT[][]",), "JSON": ("VARCHAR",),
    "JSON[]": ("VARCHAR[]",), "MAP(K, V)": ("MAP(VARCHAR, BIGINT)",),
    "STRUCT": ("STRUCT(a BIGINT)",), "BIGNUM": ("HUGEINT",), "INTEGER[]": ("BIGINT[]",),
    "VARCHAR[][]": ("VARCHAR[]",), "BOOLEAN[]": ("BIGINT[]",), "DOUBLE[]": ("DOUBLE[]",),
}  # fmt: skip
#: How many combinations of ordinary values the probe tries for one call.
_ATTEMPTS = 64
_LAMBDAS = ("x -> x", "(x, y) -> x", "(x, y, z) -> x")
#: The same lambdas as sqlglot writes them (the arrow form is deprecated in DuckDB).
_LAMBDA_SQL = {"x -> x": "LAMBDA x: x", "(x, y) -> x": "LAMBDA x, y: x",
               "(x, y, z) -> x": "LAMBDA x, y, z: x", "": ""}

#: Operators, by DuckDB function name, and how SQL writes them.
_OPERATORS: dict[str, dict[int, str]] = {
    **{op: {2: "({0} " + op + " {1})"} for op in (
        "%", "&", "&&", "*", "**", "/", "//", "<<", ">>", "<@", "@>", "^", "|", "||",
        "~~", "!~~", "~~*", "!~~*", "~~~", "->>", "^@", "<->", "<=>")},
    "+": {1: "(+ {0})", 2: "({0} + {1})"},
    "-": {1: "(- {0})", 2: "({0} - {1})"},
    "~": {1: "(~ {0})"},
    "@": {1: "(@ {0})"},
    "!__postfix": {1: "(({0})!)"},
}  # fmt: skip

#: Forms that are not one function call: casts, implicit casts in comparisons,
#: LIKE … ESCAPE, SIMILAR TO, AT TIME ZONE. ``{0}`` is the probed value.
_CAST_TARGETS = ("BOOLEAN", "TINYINT", "INTEGER", "BIGINT", "HUGEINT", "UBIGINT", "DOUBLE",
                 "DECIMAL(18,3)", "DATE", "TIME", "TIMESTAMP", "TIMESTAMPTZ", "INTERVAL",
                 "VARCHAR", "BLOB", "UUID", "JSON", "BIGINT[]", "STRUCT(a INTEGER)")


def _special_forms() -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(label, template, argument types) of the forms that are not function calls."""
    for source in ("VARCHAR", "BIGINT", "DOUBLE", "HUGEINT", "DATE", "TIMESTAMP",
                   "INTERVAL", "BLOB", "VARCHAR[]"):
        for target in _CAST_TARGETS:
            yield f"cast:{target}", f"CAST({{0}} AS {target})", (source,)
    comparisons = {"VARCHAR": ("5", "5.5", "DATE '2020-01-01'", "true", "[1]"),
                   "BIGINT": ("'x'", "'1'"), "DATE": ("'x'",), "TIMESTAMP": ("'x'",),
                   "DOUBLE": ("'x'",), "BOOLEAN": ("'x'",), "INTERVAL": ("'x'",)}
    for source, literals in comparisons.items():
        for literal in literals:
            yield (f"compare:{source}", f"({{0}} = {literal})", (source,))
            yield (f"in:{source}", f"({{0}} IN ({literal}, {literal}))", (source,))
    yield "LIKE ESCAPE", "({0} LIKE 'a' ESCAPE {1})", ("VARCHAR", "VARCHAR")
    yield "ILIKE ESCAPE", "({0} ILIKE 'a' ESCAPE {1})", ("VARCHAR", "VARCHAR")
    yield "similar_to", "({0} SIMILAR TO {1})", ("VARCHAR", "VARCHAR")
    yield "glob", "({0} GLOB {1})", ("VARCHAR", "VARCHAR")
    yield "AT TIME ZONE", "({0} AT TIME ZONE {1})", ("TIMESTAMP", "VARCHAR")
    yield "AT TIME ZONE", "({0} AT TIME ZONE {1})", ("TIMESTAMP WITH TIME ZONE", "VARCHAR")
    yield "extract", "EXTRACT(epoch FROM {0})", ("INTERVAL",)
    yield "subscript", "({0})[{1}]", ("BIGINT[]", "BIGINT")
    yield "subscript", "({0})[{1}]", ("VARCHAR", "BIGINT")
    yield "slice", "({0})[{1}:{1}]", ("BIGINT[]", "BIGINT")
    yield "slice", "({0})[{1}:{1}]", ("VARCHAR", "BIGINT")
    yield "struct_field", "({0}).a", ("STRUCT(a BIGINT)",)
    yield "case", "CASE WHEN {0} THEN 1 ELSE 0 END", ("BOOLEAN",)
    # Shapes the optimizer rewrites: a repeated sub-expression (moved out by
    # common_subexpressions), IN lists (made an OR chain, or a join by in_clause),
    # a macro that repeats its argument.
    for n in (2, 3, 5, 10, 100):
        items = ", ".join(str(i) for i in range(n))
        yield f"in_list:{n}", f"({{0}} IN ({items}))", ("VARCHAR",)
        yield f"in_list:{n}", f"(CAST({{0}} AS INTEGER) IN ({items}))", ("VARCHAR",)
    yield "repeated", "(CAST({0} AS INTEGER) = 1 OR CAST({0} AS INTEGER) = 2)", ("VARCHAR",)
    yield "repeated", "(CAST({0} AS INTEGER) + CAST({0} AS INTEGER))", ("VARCHAR",)
    yield "repeated", "({0} = 1 OR {0} = 2)", ("VARCHAR",)
    yield "repeated", "array_to_string(CAST({0} AS VARCHAR[]), ',')", ("VARCHAR",)


@dataclass
class Report:
    escapes: dict[tuple[str, int, tuple[str, ...]], Escape] = field(default_factory=dict)
    probed: set[str] = field(default_factory=set)
    ran: set[str] = field(default_factory=set)  # functions with an overload that ran
    queries: int = 0
    timeouts: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)  # queries that invalidated the database

    def add(self, function: str, position: int, signature: tuple[str, ...], error: str, *,
            template: str, ordinary: tuple[str, ...], constant: bool, column: bool = False,
            literals: tuple[str, ...] = ()) -> None:
        key = (function, position, signature)
        old = self.escapes.get(key)
        if old is not None:
            error = old.error if old.column or not column else error
            column = column or old.column
            literals = tuple(dict.fromkeys(old.literals + literals))
        self.escapes[key] = Escape(function, position, signature, error, column, literals,
                                   template, ordinary, constant)

    def sorted(self) -> list[Escape]:
        return sorted(self.escapes.values(), key=lambda e: (e.function, e.position, e.signature))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def reachable_functions(con: duckdb.DuckDBPyConnection) -> list[str]:
    """DuckDB scalar functions (and macros) an analyst's allowed SQL can call."""
    rows = con.execute(
        "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
        "WHERE function_type IN ('scalar', 'macro')"
    ).fetchall()
    scalar = {str(r[0]) for r in rows}
    names = {n for n in ALLOWED_FUNCTION_NAMES if n in scalar}
    dialect = Dialect.get_or_raise("duckdb")
    for name in dialect.parser_class.FUNCTIONS:
        for arguments in ("a", "a, b", "a, b, c", "a, b, c, d", ""):
            try:
                node = sqlglot.parse_one(f"{name}({arguments})", read="duckdb")
            except (SqlglotError, LookupError, TypeError, ValueError):
                continue
            if type(node) in ALLOWED_EXPRESSIONS and not isinstance(node, exp.Anonymous):
                try:
                    generated = node.sql(dialect="duckdb").lower()
                except (SqlglotError, TypeError, ValueError):
                    continue
                names |= {n for n in re.findall(r"([a-z_][a-z_0-9]*)\s*\(", generated)
                          if n in scalar}
            break
    return sorted(names)


def signatures_of(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, ...]]:
    """The argument types of ``name``'s overloads, made concrete for the probe."""
    rows = con.execute(
        "SELECT parameter_types, parameters, varargs FROM duckdb_functions() "
        "WHERE lower(function_name) = ? AND function_type IN ('scalar', 'macro')", [name]
    ).fetchall()
    out: set[tuple[str, ...]] = set()
    for types, parameters, varargs in rows:
        fixed = [t if t is not None else "ANY" for t in (types or ["ANY"] * len(parameters))]
        shapes = [fixed]
        if varargs is not None and varargs != "INVALID":
            shapes.append([*fixed, varargs])  # with no extra argument, and with one
        for raw in shapes:
            options: list[list[str]] = [[]]
            for t in raw:
                choices = _CONCRETE.get(t, (t,)) if t != "LAMBDA" else ("LAMBDA",)
                options = [o + [c] for o in options for c in choices]
            for o in options:
                if all(t == "LAMBDA" or t in _VALUES or t.startswith("DECIMAL") for t in o):
                    out.add(tuple("DECIMAL" if t.startswith("DECIMAL") else t for t in o))
    return sorted(out)


def _templates(name: str, arity: int) -> list[str]:
    if name in _OPERATORS:
        form = _OPERATORS[name].get(arity)
        return [form] if form else []
    return [f"{name}({', '.join('{' + str(i) + '}' for i in range(arity))})"]


def _sql_type(type_: str) -> str:
    return "DECIMAL(18,3)" if type_ == "DECIMAL" else type_


class Prober:
    """Runs the probe on one in-memory DuckDB with a memory limit and a timeout."""

    def __init__(self, timeout_s: float = 5.0,
                 disabled_optimizers: tuple[str, ...] = DISABLED_OPTIMIZERS) -> None:
        self.timeout_s = timeout_s
        self.disabled_optimizers = disabled_optimizers
        self.fatal: list[str] = []  # queries that invalidated the database
        self._open()

    def _open(self) -> None:
        self.con = duckdb.connect(":memory:", config={"memory_limit": "1GB", "threads": "1"})
        self.con.execute(f"SET disabled_optimizers = {_quote(','.join(self.disabled_optimizers))}")
        self._tables: dict[str, str] = {}

    def close(self) -> None:
        self.con.close()

    def _table(self, type_: str) -> str:
        """Tables ``adv_<n>`` (column ``v``: ``type_``'s adversarial values, ``i``,
        ``src``) and ``ok_<n>`` (one row; column ``c<k>``: the k-th ordinary value)."""
        found = self._tables.get(type_)
        if found is not None:
            return found
        name = f"adv_{len(self._tables)}_" + re.sub(r"[^a-z0-9]+", "_", type_.lower())
        sql_type = _sql_type(type_)
        self.con.execute(f"CREATE TABLE {name} (i INTEGER, v {sql_type}, src VARCHAR)")
        for i, v in enumerate(_VALUES[type_]):
            try:
                self.con.execute(f"INSERT INTO {name} SELECT {i}, v, {_quote(v)} FROM "
                                 f"(SELECT TRY(CAST({v} AS {sql_type})) AS v) "
                                 f"WHERE v IS NOT NULL OR {v} IS NULL")
            except duckdb.Error:
                continue  # a value this type cannot hold
        typical = ", ".join(f"CAST({v} AS {sql_type}) AS c{k}"
                            for k, v in enumerate(_TYPICAL[type_]))
        self.con.execute(f"CREATE TABLE ok_{name[4:]} AS SELECT {typical}")
        self._tables[type_] = name
        return name

    def _run(self, sql: str) -> BaseException | None:
        """Run ``sql``; the error it raises (None when it runs)."""
        timer = threading.Timer(self.timeout_s, self.con.interrupt)
        timer.start()
        try:
            self.con.execute(sql).fetchall()
            return None
        except duckdb.Error as exc:
            timer.cancel()
            try:
                self.con.execute("SELECT 1").fetchall()
            except duckdb.Error:
                # The error invalidated the database (for every user of it):
                # start a new one.
                self.fatal.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]} | {sql}")
                types = list(self._tables)
                self.close()
                self._open()
                for type_ in types:
                    self._table(type_)
                return duckdb.FatalException(str(exc))
            return exc
        finally:
            timer.cancel()

    @staticmethod
    def _query(expression: str, source: str, where: str = "", *, empty: bool = False) -> str:
        """Counts the non-NULL values of ``TRY(expression)`` over ``source``: every row
        is evaluated, and no value is converted to Python."""
        inner = f"SELECT TRY({expression}) AS r FROM {source}{where}"
        return f"SELECT count(r) FROM ({inner}{' LIMIT 0' if empty else ''})"

    def probe_call(self, label: str, template: str, types: tuple[str, ...],
                   report: Report) -> None:
        """Probe ``template`` (``{i}`` is argument i) with arguments of ``types``."""
        for lam in _LAMBDAS if "LAMBDA" in types else ("",):
            if self._probe_with(label, template, types, lam, report):
                report.ran.add(label)
                return

    def _baseline(self, template: str, types: tuple[str, ...], lam: str,
                  report: Report) -> tuple[list[int], bool] | None:
        """Ordinary values (an index per argument) with which the call binds and runs,
        read from columns or, when the call needs constants, written as literals."""
        tables = [self._table(t) if t != "LAMBDA" else "" for t in types]
        sizes = [len(_TYPICAL[t]) if t != "LAMBDA" else 1 for t in types]
        # Fewest changes from the first ordinary values first; at most _ATTEMPTS.
        combos = sorted(itertools.product(*(range(n) for n in sizes)),
                        key=lambda c: (sum(1 for k in c if k), sum(c)))[:_ATTEMPTS]
        for constant in (False, True):
            for combo in combos:
                choice = list(combo)
                args, joins = self._arguments(types, tables, choice, lam, None, constant)
                source = " CROSS JOIN ".join(joins) or "(SELECT 1)"
                report.queries += 1
                if self._run(self._query(template.format(*args), source)) is None:
                    return choice, constant
        return None

    @staticmethod
    def _arguments(types: tuple[str, ...], tables: list[str], choice: list[int], lam: str,
                   position: int | None, constant: bool) -> tuple[list[str], list[str]]:
        args: list[str] = []
        joins: list[str] = []
        for i, t in enumerate(types):
            if t == "LAMBDA":
                args.append(lam)
            elif i == position:
                args.append("p.v")
                joins.insert(0, f"{tables[i]} AS p")
            elif constant:
                args.append(f"CAST({_TYPICAL[t][choice[i]]} AS {_sql_type(t)})")
            else:
                args.append(f"o{i}.c{choice[i]}")
                joins.append(f"ok_{tables[i][4:]} AS o{i}")
        return args, joins

    def _probe_with(self, label: str, template: str, types: tuple[str, ...], lam: str,
                    report: Report) -> bool:
        """Probe every argument; False when the call never runs with ``lam``."""
        baseline = self._baseline(template, types, lam, report)
        if baseline is None:
            return False
        choice, constant = baseline
        tables = [self._table(t) if t != "LAMBDA" else "" for t in types]
        for position, t in enumerate(types):
            if t == "LAMBDA":
                continue
            args, joins = self._arguments(types, tables, choice, lam, position, constant)
            expression = template.format(*args)
            source = " CROSS JOIN ".join(joins)
            ordinary = tuple(_LAMBDA_SQL[lam] if t == "LAMBDA" else _TYPICAL[t][choice[i]]
                             for i, t in enumerate(types))
            found = dict(template=template, ordinary=ordinary, constant=constant)
            literals = self._literal_escapes(template, types, position, args, joins, report)
            if literals:
                report.add(label, position, types, literals[1], literals=literals[0], **found)
            report.queries += 1
            if self._run(self._query(expression, source, empty=True)) is not None:
                continue  # a constant is required here: refused while binding
            report.queries += 1
            error = self._run(self._query(expression, source))
            if error is None:
                continue
            if isinstance(error, duckdb.InterruptException):
                report.timeouts.append(f"{label}{types} arg {position}")
                continue
            report.add(label, position, types, type(error).__name__, column=True, **found)
        return True

    def _literal_escapes(self, template: str, types: tuple[str, ...], position: int,
                         args: list[str], joins: list[str],
                         report: Report) -> tuple[tuple[str, ...], str] | None:
        """The adversarial values that raise when written as literals at ``position``,
        and the error; one query for all of them first, then one per value."""
        table = self._table(types[position])
        source = " CROSS JOIN ".join(j for j in joins if not j.endswith(" AS p"))
        source = source or "(SELECT 1)"
        values = [str(r[0]) for r in self.con.execute(
            f"SELECT src FROM {table} ORDER BY i").fetchall()]

        def expression(value: str) -> str:
            literal_args = list(args)
            literal_args[position] = f"CAST({value} AS {_sql_type(types[position])})"
            return template.format(*literal_args)

        def run(batch: list[str], *, empty: bool) -> BaseException | None:
            items = ", ".join(f"TRY({expression(v)}) AS r{i}" for i, v in enumerate(batch))
            counts = ", ".join(f"count(r{i})" for i in range(len(batch)))
            inner = f"SELECT {items} FROM {source}{' LIMIT 0' if empty else ''}"
            report.queries += 1
            return self._run(f"SELECT {counts} FROM ({inner})")

        if run(values, empty=True) is None and run(values, empty=False) is None:
            return None
        raising: list[str] = []
        error_name = ""
        for value in values:
            if run([value], empty=True) is not None:
                continue  # refused while binding, whatever the data
            error = run([value], empty=False)
            if error is None or isinstance(error, duckdb.InterruptException):
                continue
            raising.append(value)
            error_name = type(error).__name__
        return (tuple(raising), error_name) if raising else None


def probe(names: Iterable[str] | None = None, *, special: bool = True,
          disabled_optimizers: tuple[str, ...] = DISABLED_OPTIMIZERS) -> Report:
    """Run the probe over ``names`` (default: every reachable function)."""
    prober = Prober(disabled_optimizers=disabled_optimizers)
    report = Report()
    try:
        for name in names if names is not None else reachable_functions(prober.con):
            report.probed.add(name)
            for types in signatures_of(prober.con, name):
                for template in _templates(name, len(types)):
                    prober.probe_call(name, template, types, report)
        if special:
            for label, template, types in _special_forms():
                report.probed.add(label)
                prober.probe_call(label, template, types, report)
    finally:
        report.fatal = prober.fatal
        prober.close()
    return report


def table_source(report: Report) -> str:
    """The escapes as the Python source of :mod:`policy.totality_table`."""
    lines = [
        '"""What ``TRY`` does not catch, for :data:`policy.totality.ESCAPES_TRY`.',
        "",
        "Generated by ``python -m tests.totality_probe --table`` on DuckDB "
        f"{duckdb.__version__}; do not edit",
        "by hand. Each row: the function (or SQL form), the argument, the overload's",
        "argument types, the exception, whether a value read from a column raises it, the",
        "values (as SQL) that raise it when written as literals, the call's SQL template,",
        "the ordinary arguments the probe ran it with, and whether those were constants.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "TABLE: tuple[tuple[Any, ...], ...] = (",
    ]
    for e in report.sorted():
        head = f"    ({e.function!r}, {e.position}, {e.signature!r},"
        tail = f" {e.error!r}, {e.column!r}, ("
        if len(head + tail) > 99:
            lines.extend([head, "    " + tail.strip()])
        else:
            lines.append(head + tail)
        line = "        "
        for value in e.literals:
            item = repr(value) + ", "
            if len(line) + len(item) > 99:
                lines.append(line.rstrip())
                line = "        "
            line += item
        if line.strip():
            lines.append(line.rstrip())
        lines.append(f"    ), {e.template!r},")
        lines.append(f"     {e.ordinary!r}, {e.constant!r}),")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys
    import time

    start = time.perf_counter()
    report = probe()
    if "--table" in sys.argv:
        sys.stdout.write(table_source(report))
        return
    print(f"# {len(report.probed)} functions and forms, {report.queries} queries, "
          f"{time.perf_counter() - start:.1f} s, {len(report.timeouts)} timeouts")
    for e in report.sorted():
        values = ", ".join(v if len(v) < 30 else v[:27] + "..." for v in e.literals[:8])
        print(f"{e.function:16} arg {e.position} {'/'.join(e.signature):40.40} {e.error:24} "
              f"{'column' if e.column else '      '} {values}")
    for name in sorted(report.probed - report.ran):
        print("never ran:", name)
    for sql in report.fatal:
        print("fatal:", sql[:200])
    for sql in report.timeouts:
        print("timeout:", sql[:160])


if __name__ == "__main__":
    main()
