"""The dataframe API (`conn.table(...)`): Ibis expressions run as SQL through the gateway.

Each expression's answer is compared with the same question asked in SQL, and
with DuckDB over the test files; the policy applies as for SQL.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import ibis
import pandas as pd
import pyarrow as pa
import pytest
import sqlglot
from network_fixtures import DOMAINS, ground_truth, start_domain, start_network
from network_fixtures import USERS as NETWORK_USERS
from sqlglot import exp

import stockade
from stockade.frame import compile_sql
from tests.conftest import USERS

_names = itertools.count()


@pytest.fixture
def conn(gateway: Any) -> Iterator[Callable[..., stockade.Connection]]:
    opened: list[stockade.Connection] = []

    def _connect(user: str, password: str | None = None) -> stockade.Connection:
        c = stockade.connect(gateway.url, user, password or USERS[user][1])
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()


@pytest.fixture
def analyst(gateway: Any) -> Iterator[stockade.Connection]:
    """A connection of a fresh user of role `analyst` (dp on oncology, 0.1 ε per query)."""
    name = f"frame_analyst_{next(_names)}"
    gateway.domain.store.add_user(name, "analyst", "analyst-password", {})
    with stockade.connect(gateway.url, name, "analyst-password") as c:
        yield c
    gateway.domain.store.remove_user(name)


def local(root: Path, sql: str, *, site: str | None = None) -> list[tuple[Any, ...]]:
    """``sql`` on DuckDB over the test files, tables as the researcher role sees them."""
    data = root / "data"
    where = f"WHERE site = '{site}'" if site else ""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA oncology; CREATE SCHEMA registry")
    con.execute(f"CREATE VIEW oncology.screenings AS SELECT * EXCLUDE (patient_id) "
                f"FROM '{data / 'screenings.parquet'}' {where}")
    con.execute(f"CREATE VIEW registry.regions AS SELECT * FROM '{data / 'regions.csv'}'")
    rows = con.execute(sql).fetchall()
    con.close()
    return rows


def plain(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with Decimal sums as ints, for comparing answers of two paths."""
    return [tuple(int(v) if type(v).__name__ == "Decimal" else v for v in r) for r in rows]


# ---------------------------------------------------------------- the same answers as SQL


def test_filter_group_by_aggregate_order_limit_equals_sql(gateway, conn):  # type: ignore[no-untyped-def]
    c = conn("rita")
    t = c.table("oncology.screenings")
    expr = (t.filter(t.age > 50).group_by("site")
            .agg(n=t.count(), total=t.age.sum(), mean_age=t.age.mean())
            .order_by("site").limit(3))
    got = expr.to_polars()
    assert isinstance(got, stockade.DataFrame) and got.privacy is None
    sql = c.sql("SELECT site, count(*) AS n, sum(age) AS total, avg(age) AS mean_age "
                "FROM oncology.screenings WHERE age > 50 GROUP BY site ORDER BY site LIMIT 3")
    assert got.columns == ["site", "n", "total", "mean_age"]
    assert plain(got.rows()) == plain(sql.rows())
    assert plain(got.rows()) == plain(local(gateway.root, expr.sql()))
    assert len(got) == 3


def test_compiled_sql_is_one_select_over_the_real_table(conn):  # type: ignore[no-untyped-def]
    t = conn("rita").table("oncology.screenings")
    sql = (t.filter(t.age > 50).group_by("site").agg(n=t.count())
           .filter(ibis._.n > 10).order_by(ibis.desc("n")).limit(2)).sql()
    tree = sqlglot.parse_one(sql, read="duckdb")
    assert tree.find(exp.Subquery) is None, sql
    assert '"oncology"."screenings"' in sql
    assert "HAVING COUNT(*) > 10" in sql and "LIMIT 2" in sql


def test_mutate_select_order_limit_equals_sql(gateway, conn):  # type: ignore[no-untyped-def]
    c = conn("rita")
    t = c.table("oncology.screenings")
    expr = (t.filter(t.site == "south").mutate(decade=(t.age // 10) * 10)
            .select("screening_id", "decade", "test").order_by("screening_id").limit(7))
    got = expr.to_polars()
    sql = c.sql("SELECT screening_id, CAST(floor(age / 10) AS BIGINT) * 10 AS decade, test "
                "FROM oncology.screenings WHERE site = 'south' ORDER BY screening_id LIMIT 7")
    assert got.rows() == sql.rows() and len(got) == 7
    assert got.columns == ["screening_id", "decade", "test"]


def test_join_of_two_tables_of_one_connection(gateway, conn):  # type: ignore[no-untyped-def]
    c = conn("rita")
    s = c.table("oncology.screenings")
    r = c.table("registry.regions")
    expr = (s.join(r, s.site == r.code).group_by("name")
            .agg(n=s.count(), beds=r.beds.max()).order_by("name"))
    got = expr.to_polars()
    want = local(gateway.root, "SELECT r.name, count(*), max(r.beds) FROM oncology.screenings s "
                               "JOIN registry.regions r ON s.site = r.code GROUP BY r.name "
                               "ORDER BY r.name")
    assert got.rows() == want
    assert got["name"].to_list() == ["Eastern", "Northern", "Southern", "Western"]


def test_the_contract_example_counts_the_filtered_rows(gateway, conn):  # type: ignore[no-untyped-def]
    t = conn("rita").table("oncology.screenings")
    got = (t.filter(t.age > 50).group_by("site").agg(n=t.count()).order_by("site").limit(10)
           .to_polars())
    assert got.rows() == local(gateway.root, "SELECT site, count(*) FROM oncology.screenings "
                                             "WHERE age > 50 GROUP BY site ORDER BY site")
    assert t.count().to_polars().item() == local(
        gateway.root, "SELECT count(*) FROM oncology.screenings")[0][0]


def test_arrow_pandas_and_names_as_written(conn):  # type: ignore[no-untyped-def]
    t = conn("rita").table("oncology.screenings")
    expr = t.group_by("test").agg(Screenings=t.count(), MeanAge=t.age.mean()).order_by("test")
    table = expr.to_arrow()
    assert isinstance(table, pa.Table)
    assert table.column_names == ["test", "Screenings", "MeanAge"]
    frame = expr.to_pandas()
    assert isinstance(frame, pd.DataFrame) and frame.attrs["privacy"] is None
    assert frame["Screenings"].tolist() == table.column("Screenings").to_pylist()


# Common operations: each compiles to SQL the gateway's function allow-list accepts, and
# answers what DuckDB answers for the same SQL over the files.
OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "count": lambda t: t.agg(v=t.count()),
    "count_column": lambda t: t.agg(v=t.age.count()),
    "sum": lambda t: t.agg(v=t.age.sum()),
    "mean": lambda t: t.agg(v=t.age.mean()),
    "min_max": lambda t: t.agg(lo=t.age.min(), hi=t.age.max()),
    "std_var": lambda t: t.agg(s=t.age.std(), v=t.age.var(), p=t.age.var(how="pop")),
    "nunique": lambda t: t.agg(v=t.test.nunique()),
    "median_quantile": lambda t: t.agg(m=t.age.median(), q=t.age.quantile(0.9)),
    "year_month": lambda t: t.group_by(y=t.screened_on.year(), m=t.screened_on.month())
                             .agg(n=t.count()).order_by(["y", "m"]),
    "quarter_day": lambda t: t.group_by(q=t.screened_on.quarter()).agg(
        d=t.screened_on.day().max()).order_by("q"),
    "day_of_week": lambda t: t.group_by(d=t.screened_on.day_of_week.index()).agg(
        n=t.count()).order_by("d"),
    "truncate": lambda t: t.group_by(m=t.screened_on.truncate("M")).agg(n=t.count())
                           .order_by("m").limit(5),
    "strings": lambda t: t.group_by(u=t.site.upper(), n=t.site.length()).agg(c=t.count())
                          .order_by("u"),
    "contains_isin_between": lambda t: t.filter(t.site.contains("or"), t.test.isin(
        ["psa", "mammography"]), t.age.between(30, 60)).agg(n=t.count()),
    "case_bucket": lambda t: t.group_by(b=t.age.bucket([0, 40, 70, 120])).agg(n=t.count())
                              .order_by("b"),
    "ifelse_round": lambda t: t.group_by(old=ibis.ifelse(t.age > 60, "old", "young")).agg(
        m=t.tumor_size_mm.mean().round(2)).order_by("old"),
    "value_counts": lambda t: t.result.value_counts().order_by("result"),
    "distinct": lambda t: t.select("site").distinct().order_by("site"),
}


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_common_operations_pass_the_gateway(gateway, conn, name):  # type: ignore[no-untyped-def]
    expr = OPERATIONS[name](conn("rita").table("oncology.screenings"))
    got = expr.to_polars()
    sql = expr.sql() if isinstance(expr, stockade.Table) else compile_sql(expr)
    want = local(gateway.root, sql)
    assert len(got) == len(want) > 0
    for row, expected in zip(plain(got.rows()), plain(want), strict=True):
        assert len(row) == len(expected)
        for value, wanted in zip(row, expected, strict=True):
            if isinstance(wanted, float):
                assert value == pytest.approx(wanted, rel=1e-12), (row, expected)
            else:
                assert value == wanted, (row, expected)


def test_plain_ibis_expressions_run_through_the_gateway(gateway, conn):  # type: ignore[no-untyped-def]
    t = conn("rita").table("oncology.screenings")
    ((mean,),) = local(gateway.root, "SELECT avg(age) FROM oncology.screenings")
    assert t.age.mean().to_polars() == pytest.approx(mean, rel=1e-12)
    assert t.age.mean().execute() == pytest.approx(mean, rel=1e-12)
    counts = t.site.value_counts().to_pyarrow()
    assert sorted(counts.column("site_count").to_pylist()) == sorted(
        n for _, n in local(gateway.root, "SELECT site, count(*) FROM oncology.screenings "
                                          "GROUP BY site"))
    assert t.expr.filter(t.age > 200).to_polars().is_empty()
    assert "FROM \"oncology\".\"screenings\"" in ibis.to_sql(t.expr)


# ---------------------------------------------------------------- the policy applies


def test_row_filter_and_hidden_columns(gateway, conn):  # type: ignore[no-untyped-def]
    carl = conn("carl")
    assert "zip" not in carl.table("oncology.patients").columns
    assert "zip" in conn("rita").table("oncology.patients").columns
    assert "patient_id" not in carl.table("oncology.screenings").columns
    t = carl.table("oncology.screenings")
    got = t.group_by("site").agg(n=t.count(), m=t.age.mean()).order_by("site").to_polars()
    want = local(gateway.root, "SELECT site, count(*), avg(age) FROM oncology.screenings "
                               "GROUP BY site", site="north")
    assert got["site"].to_list() == ["north"]
    assert got.rows()[0][1] == want[0][1]
    assert got.rows()[0][2] == pytest.approx(want[0][2], rel=1e-12)
    with pytest.raises(AttributeError):
        _ = carl.table("oncology.patients").zip


def test_dp_rows_refused_aggregates_answered_with_privacy(gateway, analyst):  # type: ignore[no-untyped-def]
    t = analyst.table("oncology.screenings")
    with pytest.raises(stockade.SqlError, match="dp mode returns aggregates only"):
        t.filter(t.age > 50).select("site", "age").to_polars()
    expr = t.filter(t.age > 50).group_by("site").agg(n=t.count()).order_by("site")
    cost = analyst.cost(expr.sql())["epsilon"]
    got = expr.to_polars()
    p = got.privacy
    assert p is not None and p.epsilon_spent == cost > 0
    assert p.epsilon_remaining == pytest.approx(3.0 - cost, abs=1e-12)
    noise = p.columns["n"]
    assert noise.ci95_half_width is not None and noise.scale is not None
    want = dict(local(gateway.root, "SELECT site, count(*) FROM oncology.screenings "
                                    "WHERE age > 50 GROUP BY site"))
    for site, n in got.rows():
        assert abs(n - want[site]) < 25 * noise.scale  # P(fail) = e^-25 per value
    again = expr.to_polars(epsilon=0.2)
    assert again.privacy is not None and again.privacy.epsilon_remaining == pytest.approx(
        3.0 - cost - again.privacy.epsilon_spent, abs=1e-12)


def test_aggregate_mode_refuses_rows_answers_groups(gateway, conn):  # type: ignore[no-untyped-def]
    t = conn("aud").table("oncology.screenings")
    with pytest.raises(stockade.InputError, match="'aggregate' mode for your role"):
        t.select("site", "age").limit(5).to_polars()
    got = t.group_by("test").agg(n=t.count(), sd=t.age.std()).order_by("test").to_polars()
    want = local(gateway.root, "SELECT test, count(*), stddev_samp(age) FROM "
                               "oncology.screenings GROUP BY test ORDER BY test")
    assert [r[:2] for r in got.rows()] == [w[:2] for w in want]
    assert got["sd"].to_list() == pytest.approx([w[2] for w in want], rel=1e-12)


def test_tables_of_two_connections_do_not_mix(conn):  # type: ignore[no-untyped-def]
    a = conn("rita").table("oncology.screenings")
    b = conn("rita").table("registry.regions")
    with pytest.raises(stockade.InputError, match="Tables of two connections cannot be combined"):
        a.join(b, a.site == b.code)


def test_unknown_table_and_grouped_table(conn):  # type: ignore[no-untyped-def]
    c = conn("rita")
    with pytest.raises(stockade.TableNotFoundError, match="Did you mean 'oncology.screenings'"):
        c.table("oncology.screening")
    t = c.table("oncology.screenings")
    with pytest.raises(stockade.InputError, match="aggregate it with"):
        t.group_by("site").to_polars()


# ---------------------------------------------------------------- a network


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("frame-network")
    domains = {name: start_domain(root / name, name) for name in DOMAINS}
    server, url = start_network({name: d.url for name, d in domains.items()})
    yield url, domains
    server.shutdown()
    for d in domains.values():
        d.stop()


def test_federated_and_routed_tables(network):  # type: ignore[no-untyped-def]
    url, domains = network
    with stockade.connect(url, "rita", NETWORK_USERS["rita"][1]) as c:
        f = c.table("federated.oncology.screenings")
        got = (f.filter(f.age >= 50).group_by("test")
               .agg(n=f.count(), mean_age=f.age.mean()).order_by("test").to_polars())
        one = c.table("st_marys.oncology.screenings")
        routed = one.group_by("site").agg(n=one.count()).order_by("site").to_polars()
        with pytest.raises(stockade.InputError, match="Name the domain of table"):
            c.table("oncology.screenings")
        with pytest.raises(stockade.InputError, match="Federated queries must aggregate"):
            f.select("site").limit(3).to_polars()
    paths = [d.parquet for d in domains.values()]
    want = ground_truth(paths, "SELECT test, count(*), avg(age) FROM screenings "
                               "WHERE age >= 50 GROUP BY test ORDER BY test")
    assert [r[:2] for r in got.rows()] == [w[:2] for w in want]
    assert got["mean_age"].to_list() == pytest.approx([w[2] for w in want], rel=1e-12)
    assert got.privacy is not None and got.privacy.federated == {n: "ok" for n in DOMAINS}
    assert routed.rows() == ground_truth([domains["st_marys"].parquet],
                                         "SELECT site, count(*) FROM screenings "
                                         "GROUP BY site ORDER BY site")
