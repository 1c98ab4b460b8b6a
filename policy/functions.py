"""The function allow-list: which SQL functions an analyst (or a policy) may call.

It is an allow-list on purpose (security invariant 2): a function is refused
unless it is named here. sqlglot turns many function calls into typed
expression classes (``LEFT(x, 3)`` becomes ``exp.Left``); the others stay
``exp.Anonymous`` with their name. Both kinds are checked, so a dangerous
function cannot slip through by being typed (``read_csv`` is ``exp.ReadCSV``)
or untyped (``getenv`` is ``exp.Anonymous``).

>>> import sqlglot
>>> is_allowed(sqlglot.parse_one("left(zip, 3)", read="duckdb"))
True
>>> is_allowed(sqlglot.parse_one("getenv('HOME')", read="duckdb"))
False
>>> function_name(sqlglot.parse_one("read_csv('/etc/passwd')", read="duckdb"))
'read_csv'

A policy may add DuckDB functions (``functions: {allow: [...]}``), but never
one of :data:`NEVER_ALLOWED`:

>>> is_allowed(sqlglot.parse_one("jaccard(a, b)", read="duckdb"), extra_names={"jaccard"})
True
>>> policy_function_problem("read_text")
"Function 'read_text' can never be allowed: it reads files, system state or settings"
>>> policy_function_problem("jacard")
"Unknown function 'jacard'. Did you mean 'jaccard'?"
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Mapping

import duckdb
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError

from gateway.errors import did_you_mean

# sqlglot expression classes (by class name) that are safe to evaluate: pure
# functions of their arguments. A name sqlglot does not define is a bug here,
# caught by the tests (``missing_expression_names``).
ALLOWED_EXPRESSION_NAMES: tuple[str, ...] = (
    # logic and conditionals
    "And", "Or", "Xor", "Case", "If", "Coalesce", "Nullif", "Nvl2", "Greatest", "Least",
    "Exists", "EqualNull", "Try",
    # casts and types
    "Cast", "TryCast", "Typeof",
    # math
    "Abs", "Acos", "Asin", "Atan", "Atan2", "Cbrt", "Ceil", "Cos", "Cot", "Degrees", "Exp",
    "Factorial", "Floor", "IsInf", "IsNan", "Ln", "Log", "Pi", "Pow", "Radians", "Round",
    "Sign", "Sin", "Sqrt", "Tan", "Trunc", "SafeDivide", "WidthBucket",
    # strings
    "Ascii", "BitLength", "ByteLength", "Chr", "Concat", "ConcatWs", "Contains", "EndsWith",
    "Initcap", "Left", "Length", "Levenshtein", "Lower", "Pad", "RegexpExtract",
    "RegexpExtractAll", "RegexpLike", "RegexpILike", "RegexpReplace", "RegexpSplit",
    "RegexpFullMatch", "Repeat", "Replace", "Reverse", "Right", "Split", "SplitPart",
    "StartsWith", "StrPosition", "Substring", "Translate", "Trim", "Upper", "Unicode",
    "Format", "JarowinklerSimilarity",
    # hashing and encoding (pure)
    "MD5", "MD5Digest", "SHA", "SHA2", "Hex", "Unhex", "ToBase64", "FromBase64",
    # date and time
    "CurrentDate", "CurrentTime", "CurrentTimestamp", "Date", "DateAdd", "DateDiff",
    "DateSub", "DateTrunc", "DateFromParts", "DateStrToDate", "DateToDateStr", "Day",
    "DayOfMonth", "DayOfWeek", "DayOfWeekIso", "DayOfYear", "Dayname", "Extract", "Hour",
    "LastDay", "MakeInterval", "Minute", "Month", "Monthname", "Quarter", "Second",
    "StrToDate", "StrToTime", "StrToUnix", "Time", "TimeAdd", "TimeDiff", "TimeStrToDate",
    "TimeStrToTime", "TimeStrToUnix", "TimeSub", "TimeToStr", "TimeToTimeStr",
    "TimeToUnix", "TimeTrunc", "Timestamp", "TimestampAdd", "TimestampDiff",
    "TimestampFromParts", "TimestampSub", "TimestampTrunc", "DateBin", "TsOrDsAdd", "TsOrDsDiff",
    "TsOrDsToDate", "TsOrDsToDateStr", "TsOrDsToTimestamp", "UnixToStr", "UnixToTime",
    "UnixToTimeStr", "UnixSeconds", "UnixMillis", "UnixMicros", "Week", "WeekOfYear",
    "Year", "YearOfWeek", "YearOfWeekIso", "MonthsBetween", "AddMonths",
    # nested values (lists, structs, maps)
    "Array", "ArrayAgg", "ArrayAll", "ArrayAny", "ArrayConcat", "ArrayContains",
    "ArrayContainsAll", "ArrayDistinct", "ArrayFilter", "ArrayFirst", "ArrayLast",
    "ArrayOverlaps", "ArrayPosition", "ArrayReverse", "ArraySize", "ArraySlice", "ArraySort",
    "ArraySum", "ArrayToString", "ArrayMax", "ArrayMin", "Struct", "StructExtract",
    "Map", "MapKeys", "MapSize", "StringToArray", "Unnest", "Explode", "Transform",
    # JSON (pure parsing and extraction)
    "JSONExtract", "JSONExtractScalar", "JSONExtractArray", "JSONType", "JSONKeys",
    "JSONArray", "JSONObject", "ParseJSON", "JSONFormat", "FromJson",
    # aggregates
    "AnyValue", "ApproxDistinct", "ApproxQuantile", "ArgMax", "ArgMin", "Avg", "Corr",
    "Count", "CountIf", "CovarPop", "CovarSamp", "First", "Last", "GroupConcat",
    "Kurtosis", "LogicalAnd", "LogicalOr", "Max", "Median", "Min", "Mode",
    "PercentileCont", "PercentileDisc", "Quantile", "RegrAvgx", "RegrAvgy", "RegrCount",
    "RegrIntercept", "RegrR2", "RegrSlope", "RegrSxx", "RegrSxy", "RegrSyy", "Skewness",
    "Stddev", "StddevPop", "StddevSamp", "Sum", "Variance", "VariancePop", "BitwiseAndAgg",
    "BitwiseOrAgg", "BitwiseXorAgg", "Grouping",
    # window functions
    "CumeDist", "DenseRank", "FirstValue", "Lag", "LastValue", "Lead", "NthValue", "Ntile",
    "PercentRank", "Rank", "RowNumber",
)


def missing_expression_names() -> list[str]:
    """Names in :data:`ALLOWED_EXPRESSION_NAMES` that sqlglot does not define."""
    return [n for n in ALLOWED_EXPRESSION_NAMES if not hasattr(exp, n)]


ALLOWED_EXPRESSIONS: frozenset[type[exp.Func]] = frozenset(
    getattr(exp, n) for n in ALLOWED_EXPRESSION_NAMES if hasattr(exp, n)
)

# Functions sqlglot leaves untyped (``exp.Anonymous``), by lowercased name.
ALLOWED_FUNCTION_NAMES: frozenset[str] = frozenset(
    """
    abs acos asin atan atan2 cbrt ceil ceiling cos cot degrees even exp factorial floor
    fmod gamma gcd lcm lgamma ln log log10 log2 mod pi pow power radians round round_even
    sign signbit sin sqrt tan trunc isfinite isinf isnan nextafter bit_count xor
    lower upper lcase ucase length len strlen char_length character_length concat concat_ws
    left right substr substring prefix suffix contains starts_with ends_with strpos instr
    position replace reverse repeat lpad rpad ltrim rtrim trim split_part string_split
    str_split regexp_matches regexp_replace regexp_extract regexp_extract_all
    regexp_full_match regexp_split_to_array like_escape ilike_escape ascii chr unicode ord
    translate initcap format printf md5 md5_number sha1 sha256 hash hex unhex to_base64
    from_base64 base64 levenshtein damerau_levenshtein jaccard jaro_similarity
    jaro_winkler_similarity hamming mismatches editdist3 bar url_encode url_decode
    nullif ifnull coalesce greatest least if iif
    date_part datepart date_trunc datetrunc date_diff datediff date_sub datesub date_add
    age century day dayname dayofmonth dayofweek dayofyear decade epoch epoch_ms epoch_us
    epoch_ns era hour isodow isoyear julian last_day make_date make_time make_timestamp
    make_timestamptz microsecond millennium millisecond minute month monthname quarter
    second strftime strptime try_strptime time_bucket timezone timezone_hour
    timezone_minute to_timestamp to_days to_hours to_minutes to_seconds to_months to_years
    to_weeks to_microseconds to_milliseconds week weekday weekofyear year yearweek
    current_date today now get_current_time get_current_timestamp
    list_value list_extract list_element list_contains list_has list_position list_sort
    list_reverse_sort list_distinct list_unique list_slice list_concat list_cat
    list_aggregate list_aggr list_transform list_apply list_filter list_reduce list_sum
    list_min list_max list_avg array_length array_extract array_slice array_contains
    len cardinality flatten generate_subscripts struct_pack struct_extract row
    map map_keys map_values map_extract element_at
    json_extract json_extract_string json_extract_path json_extract_path_text
    json_array_length json_type json_valid json_keys json_value json_object json_array
    json_structure to_json json
    count count_star sum avg mean min max median mode stddev stddev_samp stddev_pop
    variance var_samp var_pop quantile quantile_cont quantile_disc percentile_cont
    percentile_disc approx_quantile reservoir_quantile approx_count_distinct any_value
    arbitrary first last arg_min arg_max argmin argmax min_by max_by bool_and bool_or
    bit_and bit_or bit_xor string_agg group_concat listagg list array_agg histogram
    entropy kurtosis kurtosis_pop skewness mad product fsum sumkahan kahan_sum favg
    corr covar_pop covar_samp regr_avgx regr_avgy regr_count regr_intercept regr_r2
    regr_slope regr_sxx regr_sxy regr_syy count_if countif sem
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value
    last_value nth_value
    """.split()
)


# Functions a policy may never add to the allow-list, as lowercase glob
# patterns. Each reads files, the network, the catalog, settings, variables or
# the query text (which holds bound secrets), changes state, or raises errors
# an analyst controls. The built-in lists above contain none of them (tested).
NEVER_ALLOWED: tuple[str, ...] = (
    # files, network and other data sources
    "read_*", "write_*", "glob", "sniff_csv", "parquet_*", "iceberg_*", "delta_*",
    "postgres_*", "sqlite_*", "mysql_*", "http_*", "json_execute_serialized_sql",
    "arrow_scan*", "from_substrait*", "get_substrait*", "load_aws_credentials",
    # running other SQL, or showing it
    "query", "query_table", "current_query", "json_serialize_sql", "json_deserialize_sql",
    "sql_auto_complete",
    # the catalog, the configuration, the environment, variables, secrets
    "duckdb_*", "pragma_*", "pg_*", "has_*_privilege", "information_schema*",
    "getenv", "getvariable", "current_setting", "current_schema", "current_schemas",
    "current_database", "current_catalog", "current_user", "current_role", "session_user",
    "user", "in_search_path", "which_secret", "col_description", "obj_description",
    "shobj_description", "version", "platform", "stats",
    # side effects, state and analyst-controlled errors
    "nextval", "currval", "setseed", "txid_current", "checkpoint", "force_checkpoint",
    "install_*", "load_*", "enable_*", "disable_*", "export_*", "import_*", "error",
)  # fmt: skip


def never_allowed(name: str) -> bool:
    """True when ``name`` matches :data:`NEVER_ALLOWED`.

    >>> never_allowed("read_csv_auto"), never_allowed("duckdb_settings"), never_allowed("sha256")
    (True, True, False)
    """
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in NEVER_ALLOWED)


@functools.lru_cache(maxsize=1)
def duckdb_function_types() -> Mapping[str, frozenset[str]]:
    """DuckDB's own functions: lowercased name → its kinds (``scalar``, ``table``, ...).

    Read once from a fresh in-memory connection (built-in functions only).
    """
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            "SELECT DISTINCT lower(function_name), function_type FROM duckdb_functions()"
        ).fetchall()
    finally:
        con.close()
    kinds: dict[str, set[str]] = {}
    for name, kind in rows:
        kinds.setdefault(str(name), set()).add(str(kind))
    return {name: frozenset(k) for name, k in kinds.items()}


@functools.lru_cache(maxsize=1)
def duckdb_type_names() -> frozenset[str]:
    """DuckDB's built-in type names and aliases, lowercased (``varchar``, ``hugeint``, ...).

    Read once from a fresh in-memory connection, which holds no type of anyone's.

    >>> {"varchar", "hugeint", "varint"} <= duckdb_type_names()
    True
    """
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute("SELECT DISTINCT lower(type_name) FROM duckdb_types()").fetchall()
    finally:
        con.close()
    return frozenset(str(name) for (name,) in rows)


#: Kinds of DuckDB function that can be called inside an expression.
EXPRESSION_KINDS = frozenset({"scalar", "aggregate", "macro"})


def policy_function_problem(name: str) -> str | None:
    """Why a policy may not add ``name`` to the allow-list, or ``None`` when it may."""
    lowered = name.lower()
    if never_allowed(lowered):
        return (
            f"Function '{name}' can never be allowed: it reads files, system state or settings"
        )
    kinds = duckdb_function_types().get(lowered)
    if kinds is None:
        return f"Unknown function '{name}'.{did_you_mean(lowered, duckdb_function_types())}"
    if not kinds & EXPRESSION_KINDS:
        return (
            f"Function '{name}' is a {'/'.join(sorted(kinds))} function; only scalar and "
            "aggregate functions can be allowed (table functions are never allowed in FROM)"
        )
    return None


@functools.lru_cache(maxsize=1)
def _duckdb_spellings() -> Mapping[type[exp.Func], frozenset[str]]:
    """sqlglot class → the lowercased names DuckDB SQL may call it by.

    Found by parsing a call of every name the DuckDB parser knows (``unnest``
    is read as ``exp.Explode``, ``random`` as ``exp.Rand``, ``list_append`` as
    ``exp.ArrayAppend``).
    """
    dialect = Dialect.get_or_raise("duckdb")
    found: dict[type[exp.Func], set[str]] = {}
    for name in dialect.parser_class.FUNCTIONS:
        for arguments in ("a", "a, b", "a, b, c", ""):
            try:
                parsed = dialect.parse(f"SELECT {name}({arguments})")[0]
            except (SqlglotError, LookupError, TypeError, ValueError):
                # Not with these arguments: sqlglot's builders check them in
                # their own ways.
                continue
            node = parsed.expressions[0] if isinstance(parsed, exp.Select) else None
            if isinstance(node, exp.Func) and not isinstance(node, exp.Anonymous):
                found.setdefault(type(node), set()).add(name.lower())
            break
    return {cls: frozenset(names) for cls, names in found.items()}


def function_name(node: exp.Func) -> str:
    """The lowercased name a person would write for ``node``: the name they wrote.

    sqlglot reads several names as one class and keeps only where the name
    was (``meta``), not its text; the name is the spelling of that class
    whose length matches, or the class's own name when that is unknown.

    >>> import sqlglot
    >>> function_name(sqlglot.parse_one("unnest([1, 2])", read="duckdb"))
    'unnest'
    >>> function_name(sqlglot.parse_one("gen_random_uuid()", read="duckdb"))
    'gen_random_uuid'
    """
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    own = [n.lower() for n in type(node).sql_names()] or [type(node).__name__.lower()]
    start, end = node.meta.get("start"), node.meta.get("end")
    if isinstance(start, int) and isinstance(end, int):
        spellings = _duckdb_spellings().get(type(node), frozenset()) | set(own)
        fits = sorted(n for n in spellings if len(n) == end - start + 1)
        if fits:
            return own[0] if own[0] in fits else fits[0]
    return own[0]


def is_allowed(
    node: exp.Func,
    *,
    extra_names: Iterable[str] = (),
) -> bool:
    """True when the function call ``node`` is on the allow-list.

    ``extra_names`` are the names a policy adds; a typed sqlglot expression is
    matched by any of its SQL names (``random`` for ``exp.Rand``). Names in
    :data:`NEVER_ALLOWED` stay refused whatever ``extra_names`` holds.
    """
    extra = {n.lower() for n in extra_names}
    if isinstance(node, exp.Anonymous):
        name = str(node.name).lower()
        if name in ALLOWED_FUNCTION_NAMES:
            return True
        return name in extra and not never_allowed(name)
    if type(node) in ALLOWED_EXPRESSIONS:
        return True
    names = {n.lower() for n in type(node).sql_names()}
    if extra:
        names.add(function_name(node))
    return bool(names & extra) and not any(never_allowed(n) for n in names)


def allowed_names(extra_names: Iterable[str] = ()) -> frozenset[str]:
    """Every allowed function name, for "did you mean" suggestions."""
    typed = {n.lower() for cls in ALLOWED_EXPRESSIONS for n in cls.sql_names()}
    extra = {n.lower() for n in extra_names if not never_allowed(n)}
    return ALLOWED_FUNCTION_NAMES | typed | extra
