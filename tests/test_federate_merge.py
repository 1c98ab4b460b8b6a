"""Merging federated answers: equal to the query on the union of the domains' data.

The oracle splits random rows across 1–5 in-process DuckDB "domains", runs the plan's
domain query on each shard (exactly what a raw-mode domain answers), merges, and compares
with the analyst's query on the union: names, Arrow types and values (floats to 1e-9
relative). Noise metadata is checked against the combination rules of
network/federate_noise.py with synthetic dp answers of known scales.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import StockadeError
from network import federate_merge
from network.federate import plan_federated

LN20 = math.log(20.0)
Z975 = 1.959963984540054
SCHEMA = "k VARCHAR, j INTEGER, x INTEGER, y DOUBLE"
# Representative queries on federated.ds.t; each is also run on the union as ds.t.
QUERIES = [
    "SELECT k, COUNT(*) AS n, COUNT(x) AS nx, SUM(x) AS sx, SUM(y) AS sy, AVG(x) AS ax, "
    "AVG(y) AS ay, MIN(x) AS lo, MAX(y) AS hi FROM federated.ds.t GROUP BY k",
    "SELECT k, j, VAR_SAMP(x) AS v, VARIANCE(y) AS v2, VAR_POP(x) AS vp, STDDEV(y) AS sd, "
    "STDDEV_SAMP(x) AS ss, STDDEV_POP(y) AS sp FROM federated.ds.t GROUP BY k, j",
    "SELECT COUNT(*) AS n, SUM(x) / COUNT(*) AS r, ROUND(AVG(y), 2) AS ra, MIN(y) AS lo, "
    "VAR_SAMP(y) AS v FROM federated.ds.t WHERE x > 0",
    "SELECT COUNT(*), STDDEV(x), MAX(k) FROM federated.ds.t",
    "SELECT k AS kk, COUNT(*) AS n, AVG(x) AS a FROM federated.ds.t AS f GROUP BY kk "
    "HAVING COUNT(*) > 3 ORDER BY n DESC, kk LIMIT 2",
    "SELECT CASE WHEN x > 10 THEN 'big' ELSE 'small' END AS size, j, SUM(y) AS s, "
    "STDDEV_POP(x) AS sd FROM federated.ds.t GROUP BY 1, 2 ORDER BY 1, 2 NULLS FIRST "
    "LIMIT 3 OFFSET 1",
    "SELECT j + 1 AS j1, MAX(x) - MIN(x) AS spread, COUNT(x) * 2 AS twice FROM federated.ds.t "
    "GROUP BY j + 1 HAVING SUM(x) IS NOT NULL ORDER BY spread DESC NULLS LAST, j1",
    "SELECT upper(k) AS uk, AVG(y) - AVG(x) AS gap, VAR_POP(y) FROM federated.ds.t "
    "WHERE k IS NULL OR k <> 'c' GROUP BY k ORDER BY gap NULLS FIRST, uk NULLS FIRST",
]
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

Row = tuple[str | None, int | None, int | None, float | None]


def domain(rows: list[Row]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE SCHEMA ds; CREATE TABLE ds.t ({SCHEMA})")
    if rows:
        con.executemany("INSERT INTO ds.t VALUES (?, ?, ?, ?)", rows)
    return con


def answers(sql: str, shards: list[list[Row]]) -> list[tuple[str, pa.Table]]:
    """What raw-mode domains holding ``shards`` answer to the plan's domain query."""
    plan = plan_federated(sql)
    return [(f"d{i}", domain(rows).sql(plan.domain_sql).to_arrow_table())
            for i, rows in enumerate(shards)]


def close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def same_rows(got: list[tuple[object, ...]], want: list[tuple[object, ...]], ordered: bool) -> bool:
    if not ordered:
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    return len(got) == len(want) and all(
        len(g) == len(w) and all(close(a, b) for a, b in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True))


rows_strategy = st.lists(st.tuples(
    st.sampled_from(["a", "b", "c", None]),
    st.sampled_from([1, 2, None]),
    st.one_of(st.none(), st.integers(-50, 50)),
    st.one_of(st.none(), st.integers(-400, 400).map(lambda v: v / 4)),  # exact binary sums
), max_size=40)


@PROPERTY
@given(sql=st.sampled_from(QUERIES), rows=rows_strategy, data=st.data())
def test_merge_equals_the_query_on_the_union(sql: str, rows: list[Row],
                                             data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 5), label="domains")
    where = data.draw(st.lists(st.integers(0, count - 1), min_size=len(rows),
                               max_size=len(rows)), label="shard of each row")
    shards: list[list[Row]] = [[r for r, s in zip(rows, where, strict=True) if s == i]
                               for i in range(count)]
    merged = plan_federated(sql).merge(answers(sql, shards))
    union = domain(rows).sql(sql.replace("federated.", "")).to_arrow_table()

    assert merged.column_names == [*union.column_names, "domain_count"]
    for name in union.column_names:
        assert merged.schema.field(name).type == union.schema.field(name).type, name
    got = [tuple(r.values())[:-1] for r in merged.to_pylist()]
    want = [tuple(r.values()) for r in union.to_pylist()]
    assert same_rows(got, want, ordered="ORDER BY" in sql), (got, want)
    assert merged.schema.field("domain_count").type == pa.int64()
    assert json.loads(merged.schema.metadata[b"stockade.federated.domains"]) == [
        f"d{i}" for i in range(count)]


@PROPERTY
@given(rows=rows_strategy, count=st.integers(1, 5), data=st.data())
def test_domain_count_is_the_number_of_domains_holding_the_group(
        rows: list[Row], count: int, data: st.DataObject) -> None:
    where = data.draw(st.lists(st.integers(0, count - 1), min_size=len(rows),
                               max_size=len(rows)))
    shards = [[r for r, s in zip(rows, where, strict=True) if s == i] for i in range(count)]
    sql = "SELECT k, j, COUNT(*) AS n FROM federated.ds.t GROUP BY k, j"
    merged = plan_federated(sql).merge(answers(sql, shards))
    for row in merged.to_pylist():
        holders = sum(any((r[0], r[1]) == (row["k"], row["j"]) for r in shard)
                      for shard in shards)
        assert row["domain_count"] == holders >= 1


def test_null_keys_are_one_group_across_domains() -> None:
    sql = "SELECT k, COUNT(*) AS n, SUM(x) AS s FROM federated.ds.t GROUP BY k"
    shards: list[list[Row]] = [[(None, 1, 1, None), ("a", 1, 2, None)], [(None, 2, 10, None)],
                               []]
    merged = plan_federated(sql).merge(answers(sql, shards))
    assert merged.to_pylist() == [
        {"k": "a", "n": 1, "s": Decimal(2), "domain_count": 1},
        {"k": None, "n": 2, "s": Decimal(11), "domain_count": 2},
    ]


def test_an_ungrouped_query_over_no_rows_answers_one_row() -> None:
    sql = "SELECT COUNT(*) AS n, SUM(x) AS s, AVG(x) AS a, VAR_SAMP(x) AS v FROM federated.ds.t"
    merged = plan_federated(sql).merge(answers(sql, [[], []]))
    assert merged.to_pylist() == [{"n": 0, "s": None, "a": None, "v": None, "domain_count": 2}]


def test_a_group_suppressed_at_one_domain_gets_the_others_only() -> None:
    """Aggregate mode drops small groups at a domain: the merged count is a lower bound."""
    plan = plan_federated("SELECT site, COUNT(*) AS n FROM federated.onc.scr GROUP BY site")
    a = pa.table({"__g0": ["north", "south"], "__p0": pa.array([120, 40], pa.int64())})
    b = pa.table({"__g0": ["north"], "__p0": pa.array([75], pa.int64())})  # south suppressed
    merged = plan.merge([("a", a), ("b", b)])
    assert merged.to_pylist() == [{"site": "north", "n": 195, "domain_count": 2},
                                  {"site": "south", "n": 40, "domain_count": 1}]


def test_types_are_unified_across_domains() -> None:
    """A dp domain's SUM is int64 where a raw one's is DuckDB's HUGEINT (decimal 38,0)."""
    plan = plan_federated("SELECT j, SUM(x) AS s, COUNT(*) AS n FROM federated.ds.t GROUP BY j")
    raw = pa.table({"__g0": pa.array([1], pa.int32()),
                    "__p0": pa.array([Decimal(5)], pa.decimal128(38, 0)),
                    "__p1": pa.array([2], pa.int64())})
    dp = pa.table({"__g0": pa.array([1], pa.int64()), "__p0": pa.array([7], pa.int64()),
                   "__p1": pa.array([3], pa.int64())})
    merged = plan.merge([("raw", raw), ("dp", dp)])
    assert merged.schema.field("j").type == pa.int64()
    assert merged.schema.field("s").type == pa.decimal128(38, 0)
    assert merged.schema.field("n").type == pa.int64()
    assert merged.to_pylist() == [{"j": 1, "s": Decimal(12), "n": 5, "domain_count": 2}]


def test_a_domain_answering_another_shape_is_named() -> None:
    plan = plan_federated("SELECT COUNT(*) AS n, SUM(x) FROM federated.ds.t")
    with pytest.raises(StockadeError, match="Domain 'b' answered the federated query without "
                                            "the column"):
        plan.merge([("a", pa.table({"__p0": [1], "__p1": [2]})), ("b", pa.table({"__p0": [1]}))])


def test_merge_needs_distinct_domains_and_at_least_one() -> None:
    plan = plan_federated("SELECT COUNT(*) AS n FROM federated.ds.t")
    part = pa.table({"__p0": [1]})
    with pytest.raises(ValueError, match="at least one domain"):
        plan.merge([])
    with pytest.raises(ValueError, match="each domain may answer once"):
        plan.merge([("a", part), ("a", part)])


def test_the_merge_database_cannot_read_files_or_change_settings() -> None:
    """The merge runs analyst expressions, in a DuckDB without file access, locked."""
    con = federate_merge._database().cursor()
    try:
        with pytest.raises(duckdb.Error, match="disabled by configuration"):
            con.sql("SELECT * FROM read_csv('/etc/passwd')").fetchall()
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()


# -- dp answers: how the noise combines ------------------------------------------------


def noisy(values: list[object], kind: pa.DataType, draws: list[tuple[str, float]]) -> pa.Field:
    """A field with dp metadata as a domain sends it: one (mechanism, scale) per draw."""
    width = {"laplace": LN20, "gaussian": Z975}
    return pa.field("", kind, metadata={
        "stockade.dp.mechanism": ",".join(sorted({m for m, _ in draws})),
        "stockade.dp.scale": ",".join(repr(s) for _, s in draws),
        "stockade.dp.ci95_half_width": ",".join(repr(s * width[m]) for m, s in draws),
        "stockade.dp.derived": "true" if len(draws) > 1 else "false",
    })


def dp_table(columns: dict[str, tuple[list[object], pa.DataType, list[tuple[str, float]]]],
             epsilon: float | None = None) -> pa.Table:
    fields = [noisy(v, t, d).with_name(name) if d else pa.field(name, t)
              for name, (v, t, d) in columns.items()]
    arrays = [pa.array(v, f.type) for (v, _, _), f in zip(columns.values(), fields, strict=True)]
    meta = {} if epsilon is None else {"stockade.dp.epsilon_spent": repr(epsilon),
                                       "stockade.dp.delta_spent": "1e-08",
                                       "stockade.dp.epsilon_remaining": "2.5"}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def field_meta(table: pa.Table, name: str) -> dict[str, str]:
    raw = table.schema.field(name).metadata or {}
    return {k.decode().removeprefix("stockade.dp."): v.decode() for k, v in raw.items()}


def test_count_and_sum_noise_adds_in_quadrature() -> None:
    plan = plan_federated("SELECT k, COUNT(*) AS n, SUM(x) AS s FROM federated.ds.t GROUP BY k")
    assert plan.domain_sql == ("SELECT k AS __g0, COUNT(*) AS __p0, SUM(x) AS __p1 FROM ds.t "
                               "GROUP BY k")
    i64 = pa.int64()
    lap = dp_table({"__g0": (["a", "b"], pa.string(), []),
                    "__p0": ([100, 7], i64, [("laplace", 2.0)]),
                    "__p1": ([1000, 70], i64, [("laplace", 20.0)])}, epsilon=0.3)
    gau = dp_table({"__g0": (["a"], pa.string(), []),
                    "__p0": ([50], i64, [("gaussian", 3.0)]),
                    "__p1": ([500], i64, [("gaussian", 30.0)])}, epsilon=0.2)
    raw = pa.table({"__g0": ["a", "b"], "__p0": pa.array([5, 5], i64),
                    "__p1": pa.array([Decimal(9), Decimal(9)], pa.decimal128(38, 0))})
    merged = plan.merge([("lap", lap), ("gau", gau), ("raw", raw)])
    assert merged.column("n").to_pylist() == [155, 12]
    n = field_meta(merged, "n")
    # group a: Laplace b=2 (σ² = 2b²) + Gaussian σ=3 + exact; group b: the Laplace one only
    row_a = (math.sqrt(2 * 2.0**2 + 3.0**2), math.sqrt((2.0 * LN20) ** 2 + (3.0 * Z975) ** 2))
    row_b = (math.sqrt(2 * 2.0**2), 2.0 * LN20)
    assert json.loads(n["scale_by_row"]) == pytest.approx([row_a[0], row_b[0]], rel=1e-12)
    assert json.loads(n["ci95_half_width_by_row"]) == pytest.approx([row_a[1], row_b[1]],
                                                                   rel=1e-12)
    assert float(n["scale"]) == pytest.approx(row_a[0], rel=1e-12)
    assert float(n["ci95_half_width"]) == pytest.approx(row_a[1], rel=1e-12)
    assert (n["mechanism"], n["derived"]) == ("gaussian,laplace", "false")
    s = field_meta(merged, "s")
    assert float(s["ci95_half_width"]) == pytest.approx(10 * row_a[1], rel=1e-12)
    assert merged.schema.field("k").metadata is None
    assert merged.schema.field("domain_count").metadata is None
    meta = merged.schema.metadata
    assert json.loads(meta[b"stockade.federated.epsilon_spent"]) == {"lap": 0.3, "gau": 0.2}
    assert json.loads(meta[b"stockade.federated.delta_spent"]) == {"lap": 1e-08, "gau": 1e-08}
    assert json.loads(meta[b"stockade.federated.epsilon_remaining"]) == {"lap": 2.5, "gau": 2.5}
    assert json.loads(meta[b"stockade.federated.domains"]) == ["lap", "gau", "raw"]


def test_avg_and_ratios_use_the_delta_method() -> None:
    plan = plan_federated("SELECT AVG(x) AS a, ROUND(SUM(x) / COUNT(x), 1) AS r, "
                          "2 * AVG(x) + 1 AS lin FROM federated.ds.t")
    assert plan.domain_sql == "SELECT SUM(x) AS __p0, COUNT(x) AS __p1 FROM ds.t"
    i64 = pa.int64()
    one = dp_table({"__p0": ([600], i64, [("laplace", 10.0)]),
                    "__p1": ([20], i64, [("laplace", 1.0)])}, epsilon=0.2)
    two = dp_table({"__p0": ([400], i64, [("laplace", 5.0)]),
                    "__p1": ([30], i64, [("laplace", 0.5)])}, epsilon=0.2)
    merged = plan.merge([("one", one), ("two", two)])
    total, n = 1000.0, 50.0
    assert merged.column("a").to_pylist() == [total / n]
    # a = S/N: ∂a/∂S = 1/N, ∂a/∂N = -S/N²; the sums' widths add in quadrature first
    w_s = math.sqrt((10.0 * LN20) ** 2 + (5.0 * LN20) ** 2)
    w_n = math.sqrt((1.0 * LN20) ** 2 + (0.5 * LN20) ** 2)
    width = math.sqrt((w_s / n) ** 2 + (total / n**2 * w_n) ** 2)
    sd_s, sd_n = math.sqrt(2 * (10.0**2 + 5.0**2)), math.sqrt(2 * (1.0**2 + 0.5**2))
    std = math.sqrt((sd_s / n) ** 2 + (total / n**2 * sd_n) ** 2)
    a = field_meta(merged, "a")
    assert float(a["ci95_half_width"]) == pytest.approx(width, rel=1e-12)
    assert float(a["scale"]) == pytest.approx(std, rel=1e-12)
    assert a["derived"] == "true"
    assert float(field_meta(merged, "r")["ci95_half_width"]) == pytest.approx(width, rel=1e-12)
    assert float(field_meta(merged, "lin")["ci95_half_width"]) == pytest.approx(2 * width,
                                                                               rel=1e-12)


def merged_variance(parts: list[tuple[float, float, float]], sample: bool) -> float:
    """VAR of the union from each domain's (count, sum, sum of squares)."""
    n = sum(p[0] for p in parts)
    s = sum(p[1] for p in parts)
    q = sum(p[2] for p in parts)
    return (q - s * s / n) / (n - 1 if sample else n)


@pytest.mark.parametrize("function, sample, root", [
    ("VAR_SAMP", True, False), ("VAR_POP", False, False), ("STDDEV", True, True),
    ("STDDEV_POP", False, True)])
def test_variance_noise_is_the_delta_method_over_count_sum_and_squares(
        function: str, sample: bool, root: bool) -> None:
    plan = plan_federated(f"SELECT {function}(x) AS v FROM federated.ds.t")
    assert plan.domain_sql == ("SELECT COUNT(x) AS __p0, AVG(x) AS __p1, VAR_POP(x) AS __p2 "
                               "FROM ds.t")
    # Per domain: count, sum and sum of squares, and the Laplace scale of each draw.
    truth = [(40.0, 800.0, 20000.0), (60.0, 1500.0, 45000.0)]
    scales = [(1.0, 10.0, 100.0), (2.0, 20.0, 400.0)]
    parts = []
    for (n, s, q), (b_n, b_s, b_q) in zip(truth, scales, strict=True):
        mean, var_pop = s / n, q / n - (s / n) ** 2
        parts.append(dp_table({
            "__p0": ([int(n)], pa.int64(), [("laplace", b_n)]),
            # SmartNoise lists a derived column's draws: AVG (sum, count), VAR (sq, count, sum)
            "__p1": ([mean], pa.float64(), [("laplace", b_s), ("laplace", b_n)]),
            "__p2": ([var_pop], pa.float64(),
                     [("laplace", b_q), ("laplace", b_n), ("laplace", b_s)]),
        }))
    merged = plan.merge([("one", parts[0]), ("two", parts[1])])
    expected = merged_variance(truth, sample)
    value = merged.column("v").to_pylist()[0]
    assert value == pytest.approx(math.sqrt(expected) if root else expected, rel=1e-12)

    # The gradient with respect to the merged totals N, S, Q, by central differences.
    def f(d_n: float = 0.0, d_s: float = 0.0, d_q: float = 0.0) -> float:
        v = merged_variance([(truth[0][0] + d_n, truth[0][1] + d_s, truth[0][2] + d_q),
                             truth[1]], sample)
        return math.sqrt(v) if root else v

    h = 1e-3
    grad = [(f(d_n=h) - f(d_n=-h)) / (2 * h), (f(d_s=h) - f(d_s=-h)) / (2 * h),
            (f(d_q=h) - f(d_q=-h)) / (2 * h)]
    w2 = [sum((b[i] * LN20) ** 2 for b in scales) for i in range(3)]
    width = math.sqrt(sum(g * g * w for g, w in zip(grad, w2, strict=True)))
    meta = field_meta(merged, "v")
    assert float(meta["ci95_half_width"]) == pytest.approx(width, rel=1e-6)
    assert float(meta["scale"]) == pytest.approx(width / LN20 * math.sqrt(2), rel=1e-6)


def test_raw_domains_add_no_noise_and_min_max_are_exact() -> None:
    plan = plan_federated("SELECT COUNT(*) AS n, MAX(x) AS hi FROM federated.ds.t")
    raw = pa.table({"__p0": pa.array([4], pa.int64()), "__p1": pa.array([9], pa.int32())})
    merged = plan.merge([("raw", raw)])
    assert all(f.metadata is None for f in merged.schema)
    assert b"stockade.federated.epsilon_spent" not in merged.schema.metadata
    dp = dp_table({"__p0": ([3], pa.int64(), [("laplace", 1.0)]),
                   "__p1": ([5], pa.int32(), [])}, epsilon=0.1)
    merged = plan.merge([("raw", raw), ("dp", dp)])
    assert float(field_meta(merged, "n")["ci95_half_width"]) == pytest.approx(LN20)
    assert merged.schema.field("hi").metadata is None


def test_noise_that_cannot_be_taken_apart_gives_no_interval() -> None:
    plan = plan_federated("SELECT VAR_POP(x) AS v, COUNT(x) AS n FROM federated.ds.t")
    odd = dp_table({"__p0": ([10], pa.int64(), [("laplace", 1.0)]),
                    "__p1": ([2.0], pa.float64(), [("laplace", 5.0), ("laplace", 1.0)]),
                    "__p2": ([1.0], pa.float64(), [("laplace", 7.0)])})  # 1 draw, not 3
    merged = plan.merge([("odd", odd)])
    v = field_meta(merged, "v")
    assert json.loads(v["ci95_half_width_by_row"]) == [None]
    assert "ci95_half_width" not in v and "scale" not in v
    assert float(field_meta(merged, "n")["ci95_half_width"]) == pytest.approx(LN20)


def test_an_ungrouped_count_is_zero_when_every_domain_suppressed_it() -> None:
    """An aggregate-mode domain may answer a small scalar aggregate with no row at all."""
    plan = plan_federated("SELECT COUNT(*) AS n, AVG(x) AS a FROM federated.ds.t")
    empty = pa.table({"__p0": pa.array([], pa.int64()), "__p1": pa.array([], pa.int64()),
                      "__p2": pa.array([], pa.int64())})
    assert plan.merge([("a", empty), ("b", empty)]).to_pylist() == [
        {"n": 0, "a": None, "domain_count": 0}]


def test_concurrent_merges_do_not_see_each_other() -> None:
    plan = plan_federated("SELECT k, SUM(x) AS s FROM federated.ds.t GROUP BY k")

    def run(i: int) -> list[object]:
        part = pa.table({"__g0": ["a"], "__p0": pa.array([i], pa.int64())})
        return plan.merge([("a", part), ("b", part)]).column("s").to_pylist()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(64)))
    assert results == [[Decimal(2 * i)] for i in range(64)]


def test_having_and_order_by_may_use_domain_count() -> None:
    shards: list[list[Row]] = [[("a", 1, 1, None), ("b", 1, 1, None)], [("a", 1, 2, None)],
                               [("a", 1, 3, None), ("c", 1, 4, None), ("c", 1, 5, None)]]
    sql = ("SELECT k, COUNT(*) AS n FROM federated.ds.t GROUP BY k "
           "ORDER BY domain_count DESC, n DESC")
    merged = plan_federated(sql).merge(answers(sql, shards))
    assert [(r["k"], r["domain_count"]) for r in merged.to_pylist()] == [
        ("a", 3), ("c", 1), ("b", 1)]
    sql = "SELECT k, SUM(x) AS s FROM federated.ds.t GROUP BY k HAVING domain_count = 3"
    merged = plan_federated(sql).merge(answers(sql, shards))
    assert merged.to_pylist() == [{"k": "a", "s": Decimal(6), "domain_count": 3}]
