"""dp mode end to end on the engine: accounting, cache, metadata, refusals, sampling."""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from test_dp_env import POLICY, DpEnv, open_env

from gateway.dp.aggregate import bounded as bounded_rows
from gateway.dp.translate import DpQueryError
from gateway.errors import InputError, StockadeError
from gateway.ledger import ASK_FOR_MORE, BudgetExceededError, Cost
from policy.loader import parse_policy


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = open_env(tmp_path)
    yield e
    e.close()


def meta(table: pa.Table, key: str) -> str:
    return table.schema.metadata[f"stockade.dp.{key}".encode()].decode()


def test_cost_preview_charges_nothing(env: DpEnv) -> None:
    plan = env.plan("SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM visits GROUP BY site")
    cost = env.dp.cost(plan)
    # key count + COUNT(*) + SUM(cost) + COUNT(cost), 0.5 each; δ only for the key count.
    assert (cost.epsilon, cost.delta) == (2.0, 1e-6)
    assert env.ledger.charges() == []


def test_exact_accounting_over_a_sequence_of_queries(env: DpEnv) -> None:
    expected = [
        ("SELECT COUNT(*) AS n FROM visits", 0.5, 0.0),
        ("SELECT site, COUNT(*) AS n FROM visits GROUP BY site", 1.0, 1e-6),
        ("SELECT AVG(cost) AS c FROM visits WHERE age > 30", 1.0, 0.0),
        ("SELECT SUM(cost) AS s FROM visits", 0.5, 0.0),
    ]
    spent = 0.0
    for sql, eps, delta in expected:
        table = env.run(sql)
        assert (float(meta(table, "epsilon_spent")), float(meta(table, "delta_spent"))) \
            == (eps, delta)
        spent += eps
    b = env.ledger.balance("alice", "health")
    assert (b.spent_epsilon, b.remaining_epsilon) == (3.0, 2.0)
    assert (b.spent_delta, b.remaining_delta) == (1e-6, 9.9e-5)
    assert meta(table, "epsilon_remaining") == "2.0"
    assert meta(table, "delta_remaining") == "9.9e-05"


def test_exhaustion_at_exactly_the_right_query(env: DpEnv) -> None:
    for i in range(10):  # 10 × 0.5 = 5.0, the analyst's budget
        env.run(f"SELECT COUNT(*) AS n FROM visits WHERE age > {i}")
    with pytest.raises(BudgetExceededError, match=re.escape(
            "Budget for dataset 'health' exhausted: 0 of 5 ε left, this query needs 0.5. "
            + ASK_FOR_MORE)):
        env.run("SELECT COUNT(*) AS n FROM visits WHERE age > 10")
    assert env.ledger.balance("alice", "health").spent_epsilon == 5.0


def test_fifty_concurrent_queries_against_a_budget_for_ten(env: DpEnv) -> None:
    plans = [env.plan(f"SELECT COUNT(*) AS n FROM visits WHERE age >= {i}") for i in range(50)]
    barrier = threading.Barrier(50)
    answered: list[pa.Table] = []
    refused: list[StockadeError] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        try:
            table = env.dp.execute(plans[i])
            with lock:
                answered.append(table)
        except BudgetExceededError as exc:
            with lock:
                refused.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(answered), len(refused)) == (10, 40)
    assert env.ledger.balance("alice", "health").spent_epsilon == 5.0
    assert len(env.ledger.charges("alice")) == 10


def test_a_repeated_query_is_answered_from_the_cache_for_free(tmp_path: Path) -> None:
    sql = "SELECT site, COUNT(*) AS n FROM visits GROUP BY site ORDER BY site"
    env = open_env(tmp_path)
    first = env.run(sql)
    again = env.run("select site,  count(*) as n from health.visits group by 1 order by site")
    assert again.to_pydict() == first.to_pydict()
    assert (meta(first, "cached"), meta(again, "cached")) == ("false", "true")
    assert meta(again, "epsilon_spent") == "0.0"
    assert env.ledger.balance("alice", "health").spent_epsilon == 1.0
    # Another ε is another query; another user pays for their own.
    assert meta(env.run(sql, epsilon=0.25), "epsilon_spent") == "0.5"
    assert meta(env.run(sql, user="bob"), "cached") == "false"
    env.close()
    # After a restart the stored answer is still there: same noise, no charge.
    env = open_env(tmp_path / "restarted", data=tmp_path)
    env.store.close()
    from argon2 import PasswordHasher

    from gateway.dp import PrivateQueries
    from gateway.ledger import Ledger
    from gateway.state import StateStore
    env.store = StateStore(tmp_path / "state", hasher=PasswordHasher(memory_cost=8192))
    env.ledger = Ledger(env.store)
    env.dp = PrivateQueries(env.engine, env.ledger)
    after = env.run(sql)
    assert after.to_pydict() == first.to_pydict() and meta(after, "cached") == "true"
    assert env.ledger.balance("alice", "health").spent_epsilon == 1.5
    env.close()


def test_answer_metadata_names_mechanism_scale_and_interval(env: DpEnv) -> None:
    table = env.run("SELECT site, COUNT(*) AS n, SUM(age) AS s, AVG(cost) AS c "
                    "FROM visits GROUP BY site")
    assert table.column_names == ["site", "n", "s", "c"]
    assert table.schema.field("site").metadata is None
    n = table.schema.field("n").metadata
    # COUNT: sensitivity 1, 2 rows per unit, ε 0.5 -> scale 4 (OpenDP's search lands
    # just above). A count is a whole number (rounded to nearest): its 95 % half-width is
    # the smallest whole k with P(|round(L)| <= k) >= 95 %, k = ceil(b·ln 20 - 1/2) = 12,
    # and the exact coverage 1 - exp(-(k + 1/2)/b) is reported beside it.
    scale = float(n[b"stockade.dp.scale"])
    assert n[b"stockade.dp.mechanism"] == b"laplace" and 4.0 <= scale < 4.0001
    assert float(n[b"stockade.dp.ci95_half_width"]) == 12.0
    assert float(n[b"stockade.dp.ci95_coverage"]) == pytest.approx(1 - math.exp(-12.5 / scale))
    s = table.schema.field("s").metadata
    assert 400.0 <= float(s[b"stockade.dp.scale"]) < 400.01  # bounds 0..100
    c = table.schema.field("c").metadata
    assert c[b"stockade.dp.derived"] == b"true"
    assert len(c[b"stockade.dp.scale"].split(b",")) == 2  # SUM and COUNT
    # AVG's own interval, per released row (its width depends on the group's size).
    by_row = json.loads(c[b"stockade.dp.ci95_half_width_by_row"])
    assert len(by_row) == table.num_rows and all(0 < w < 10 for w in by_row)
    assert c[b"stockade.dp.null_when"] == b"the noisy denominator is not positive"
    for key in ("epsilon_spent", "delta_spent", "epsilon_remaining", "delta_remaining"):
        float(meta(table, key))


def test_policy_applies_before_noise(env: DpEnv) -> None:
    plan = env.plan("SELECT COUNT(*) AS n FROM visits")
    assert '("visits"."consent")' in plan.query.relation_sql  # the table's row filter
    assert "'***' AS \"name\"" in plan.query.relation_sql  # the mask
    with pytest.raises(InputError, match="patient_id"):
        env.plan("SELECT COUNT(*) FROM visits WHERE patient_id = 3")  # hidden
    table = env.run("SELECT COUNT(*) AS n FROM visits")
    # 1,800 consented rows; Laplace scale 2: 20 scales away is never seen.
    assert abs(table["n"][0].as_py() - 1800) < 40


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM visits", "neither an aggregate nor in GROUP BY"),
    ("SELECT site, cost FROM visits", "'site' is neither an aggregate nor in GROUP BY"),
    ("SELECT MIN(cost) FROM visits", "MIN is not available in dp mode"),
    ("SELECT MAX(cost) FROM visits", "use AVG, or COUNT(*) with a WHERE range"),
    ("SELECT COUNT(DISTINCT site) FROM visits", "COUNT(DISTINCT ...) is not available"),
    ("SELECT SUM(cost * 2) FROM visits", "SUM(x) * 2, not SUM(x * 2)"),
    ("SELECT COUNT(*) FROM visits v JOIN people p ON v.age = p.id", "does not support joins"),
    ("SELECT COUNT(*) FROM (SELECT * FROM visits)", "does not support subqueries"),
    ("WITH a AS (SELECT * FROM visits) SELECT COUNT(*) FROM a", "does not support WITH"),
    ("SELECT COUNT(*) OVER () FROM visits", "does not support window functions"),
    ("SELECT DISTINCT site FROM visits", "does not support SELECT DISTINCT"),
    ("SELECT COUNT(*) FROM visits WHERE age > ?", "does not take query parameters"),
    ("SELECT COUNT(*) FROM visits UNION ALL SELECT COUNT(*) FROM visits", "a single SELECT"),
    ("SELECT median(cost) FROM visits", "Aggregate"),
    ("SELECT site, COUNT(*) FROM visits GROUP BY ROLLUP (site)", "ROLLUP, CUBE or GROUPING"),
])
def test_refusals_say_what_to_write(env: DpEnv, sql: str, message: str) -> None:
    with pytest.raises(DpQueryError, match=re.escape(message)):
        env.plan(sql)


def test_unbounded_sum_is_refused(env: DpEnv) -> None:
    plan = env.plan("SELECT SUM(patient_id) AS s FROM crowded")
    with pytest.raises(InputError, match="no bounds in the policy"):
        env.dp.cost(plan)
    with pytest.raises(InputError, match="no bounds in the policy"):
        env.dp.execute(plan)
    assert env.ledger.charges() == []


def test_raw_table_is_not_dp(env: DpEnv) -> None:
    with pytest.raises(InputError, match="'raw' mode for your role, not 'dp'"):
        env.plan("SELECT COUNT(*) FROM plain")


def test_group_by_needs_delta(env: DpEnv) -> None:
    with pytest.raises(InputError, match="needs δ > 0 to hide rare groups"):
        env.plan("SELECT site, COUNT(*) FROM visits GROUP BY site", delta=0.0)
    with pytest.raises(BudgetExceededError, match="no δ budget"):
        env.run("SELECT site, COUNT(*) FROM visits GROUP BY site", user="carol", role="poor")


def test_having_order_limit_apply_to_the_noisy_answer(env: DpEnv) -> None:
    table = env.run("SELECT site, COUNT(*) AS n FROM visits GROUP BY site "
                    "HAVING COUNT(*) > 100 ORDER BY site DESC LIMIT 2")
    assert table["site"].to_pylist() == ["site3", "site2"]


def test_rare_groups_are_censored(env: DpEnv) -> None:
    # Grouping by the (masked) name makes 1,800 groups of one row each: all censored.
    table = env.run("SELECT name, COUNT(*) AS n FROM visits WHERE age < 3 GROUP BY name")
    assert table.num_rows == 0 or table["name"].to_pylist() == ["***"]
    assert env.run("SELECT age, COUNT(*) AS n FROM visits WHERE age < 3 GROUP BY age "
                   "ORDER BY age", user="bob").num_rows <= 3


SAMPLING = "ROW_NUMBER() OVER (PARTITION BY u ORDER BY __stockade_random)"
COST_CLAMP = 'CASE WHEN "v0" < 0.0 THEN 0.0 WHEN "v0" > 100.0 THEN 100.0 ELSE "v0" END'


def per_unit(env: DpEnv, source: str, unit: str = "patient_id") -> tuple[int, int]:
    """(most rows of one unit, rows) of ``source`` read on the engine."""
    cur = env.engine.cursor()
    try:
        row = cur.execute(f"SELECT max(c), sum(c) FROM (SELECT count(*) AS c FROM {source} "
                          f"GROUP BY {unit})").fetchone()
    finally:
        cur.close()
    return int(row[0]), int(row[1])


def test_rows_per_unit_are_bounded_by_the_snapshot_not_by_a_check(env: DpEnv) -> None:
    # Every dp table with a file source is read through its bounded snapshot, whether
    # or not its data already met the bound: visits does (2 rows per patient, bound 2),
    # crowded does not (patient 0 twice, bound 1).
    assert per_unit(env, '"health"."visits"') == (2, 2000)
    assert per_unit(env, '"health"."crowded"') == (2, 100)
    for table, bounded in (("visits", (2, 2000)), ("crowded", (1, 99))):
        with env.engine.bounded_source("health", table) as snapshot:
            assert snapshot is not None and snapshot.unit == "patient_id"
            assert per_unit(env, snapshot.sql) == bounded
            sql = env.dp.aggregate_sql(env.plan(f"SELECT SUM(cost) AS s FROM {table}"))
        assert snapshot.sql in sql and '"health"' not in sql  # never the table itself
        assert "ROW_NUMBER" not in sql  # the snapshot is bounded: no sample in the query


def test_sources_without_a_snapshot_are_always_sampled(tmp_path: Path) -> None:
    env = open_env(tmp_path, snapshots=False)
    with env.engine.bounded_source("health", "visits") as snapshot:
        assert snapshot is None
    sql = env.dp.aggregate_sql(env.plan("SELECT site, COUNT(*) AS n FROM visits GROUP BY site"))
    assert SAMPLING in sql and '"health"."visits"' in sql
    env.close()


def test_sampling_runs_on_the_locked_engine_and_bounds_rows(tmp_path: Path) -> None:
    env = open_env(tmp_path, snapshots=False)
    cur = env.engine.cursor()
    # crowded: 100 rows, patient 0 twice, at most 1 row per unit -> 99 rows counted.
    exact = cur.execute(env.dp.aggregate_sql(env.plan("SELECT COUNT(*) AS n FROM crowded"))
                        ).fetchone()
    assert exact == (99,)
    # visits: 2 rows per unit allowed; with 1 the sample picks either row of unit 7.
    relation = 'SELECT "patient_id" AS u, "cost" AS v0 FROM "health"."visits"'
    sampled = "SELECT u, v0 FROM " + bounded_rows(relation, ["u", "v0"], unit=True, max_rows=1,
                                                  sample=True)
    per_unit = cur.execute(f"SELECT max(c), count(*) FROM (SELECT u, count(*) AS c "
                           f"FROM ({sampled}) GROUP BY u)").fetchone()
    assert per_unit == (1, 1000)  # every unit kept, with one row
    picks = {cur.execute(f"SELECT v0 FROM ({sampled}) WHERE u = 7").fetchone()[0]
             for _ in range(40)}
    assert picks == {14.0, 15.0}  # both of unit 7's rows get chosen: a random sample
    cur.close()
    env.close()


@pytest.mark.parametrize("snapshots", [True, False])
def test_values_are_always_clamped(tmp_path: Path, snapshots: bool) -> None:
    # Every cost lies within [0, 100] (up to 49): the clamp is kept all the same.
    env = open_env(tmp_path, snapshots=snapshots)
    assert env.engine.cursor().execute(
        'SELECT max(cost) FROM "health"."visits"').fetchone() == (49.0,)
    sql = env.dp.aggregate_sql(env.plan("SELECT SUM(cost) AS s FROM visits"))
    assert COST_CLAMP in sql
    assert ("ROW_NUMBER" in sql) is not snapshots
    env.close()


def test_a_query_reads_one_snapshot_version_while_a_newer_one_is_swapped_in(
        tmp_path: Path) -> None:
    env = open_env(tmp_path)
    with env.engine.bounded_source("health", "crowded") as before:
        assert before is not None
    run = env.engine.execute
    changes: list[object] = []
    executed: list[str] = []

    def execute_after_a_change(sql, *args, **kwargs):  # type: ignore[no-untyped-def]
        executed.append(sql)
        if not changes:  # the source changes, and is seen, while the query runs
            con = duckdb.connect()
            con.execute(f"COPY (SELECT i AS patient_id, 20.0 AS cost FROM range(50) r(i)) "
                        f"TO '{tmp_path / 'crowded.parquet'}' (FORMAT parquet)")
            con.close()
            changes.extend(env.engine.refresh_snapshots())
        return run(sql, *args, **kwargs)

    env.engine.execute = execute_after_a_change  # type: ignore[method-assign]
    env.run("SELECT SUM(cost) AS s FROM crowded")
    (sql,) = executed  # read once, from the version it started with
    assert before.sql in sql and "ROW_NUMBER" not in sql
    with env.engine.bounded_source("health", "crowded") as after:
        assert after is not None and after.name != before.name
    assert [(c.table, c.before, c.after) for c in changes] == [  # type: ignore[attr-defined]
        ("crowded", before.name, after.name)]
    cur = env.engine.cursor()  # the old version went when its last query ended
    names = {r[0] for r in cur.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
    cur.close()
    assert after.name in names and before.name not in names
    env.close()


def test_plans_are_shared_by_users_of_one_role(env: DpEnv) -> None:
    sql = "SELECT site, COUNT(*) AS n FROM visits GROUP BY site"
    alice, bob = env.plan(sql), env.plan(sql, user="bob")
    assert alice.query is bob.query and (alice.user, bob.user) == ("alice", "bob")
    assert alice.key != bob.key  # each pays for their own answer
    assert env.plan(sql, role="statistician").query is not alice.query


def test_result_schema_without_running_or_charging(env: DpEnv) -> None:
    plan = env.plan("SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM visits GROUP BY site")
    schema = env.dp.result_schema(plan)
    assert env.ledger.charges() == []
    table = env.dp.execute(plan)
    assert schema.names == table.schema.names == ["site", "n", "c"]
    assert [f.type for f in schema] == [f.type for f in table.schema]
    by_row = b"stockade.dp.ci95_half_width_by_row"  # a derived column's per-row intervals
    for name in schema.names:
        expected = dict(table.schema.field(name).metadata or {})
        if by_row in expected:  # known once there are rows: the schema has the key, empty
            assert len(json.loads(expected.pop(by_row))) == table.num_rows
            assert json.loads(schema.field(name).metadata[by_row]) == []
        assert {k: v for k, v in (schema.field(name).metadata or {}).items()
                if k != by_row} == expected
    answer = table.schema.metadata
    assert {k: v for k, v in answer.items() if k in schema.metadata} == schema.metadata


def test_result_schema_has_the_names_of_the_query_asked(env: DpEnv) -> None:
    # Two queries that measure the same thing under other names (a network asks a domain
    # for the schema of its part, ``COUNT(*) AS __p0``, after the analyst's ``AS n``).
    first = env.dp.result_schema(env.plan("SELECT site, COUNT(*) AS n FROM visits GROUP BY site"))
    second = env.dp.result_schema(
        env.plan("SELECT site AS __g0, COUNT(*) AS __p0 FROM visits GROUP BY site"))
    assert (first.names, second.names) == (["site", "n"], ["__g0", "__p0"])


BOUNDED = ("health: {mode: dp, epsilon_per_query: 0.5, min_epsilon_per_query: 0.1, "
           "max_epsilon_per_query: 1, budget: {epsilon: 5.0, delta: 1.0e-4}}")


def bounded(env: DpEnv, tmp_path: Path, *, cap: str = "") -> DpEnv:
    """``env`` with the analyst's ε bounded to [0.1, 1] (and a dataset cap if given)."""
    grant = "health: {mode: dp, epsilon_per_query: 0.5, budget: {epsilon: 5.0, delta: 1.0e-4}}"
    assert grant in POLICY
    text = POLICY.replace(grant, BOUNDED, 1)
    if cap:
        text = text.replace("  health:\n    tables:\n", f"  health:\n    budget_cap: {cap}\n"
                                                         "    tables:\n", 1)
    env.policy = parse_policy(text, base_dir=str(tmp_path))
    return env


def test_a_chosen_epsilon_must_be_within_the_grants_bounds(env: DpEnv, tmp_path: Path) -> None:
    bounded(env, tmp_path)
    sql = "SELECT COUNT(*) AS n FROM visits"
    with pytest.raises(InputError, match=re.escape(
            "ε 5 is above this dataset's maximum of 1 per query; choose ε ≤ 1")):
        env.plan(sql, epsilon=5)
    with pytest.raises(InputError, match=re.escape(
            "ε 0.05 is below this dataset's minimum of 0.1 per query; choose ε ≥ 0.1")):
        env.plan(sql, epsilon=0.05)
    assert env.plan(sql).epsilon == 0.5  # the default lies within the bounds
    assert env.plan(sql, epsilon=1).epsilon == 1.0  # the bounds themselves are allowed
    assert env.plan(sql, epsilon=0.1).epsilon == 0.1
    assert meta(env.run(sql, epsilon=0.75), "epsilon_spent") == "0.75"
    assert [c[2] for c in env.ledger.charges()] == [0.75]  # refused plans charged nothing


def test_other_roles_keep_their_own_bounds(env: DpEnv, tmp_path: Path) -> None:
    bounded(env, tmp_path)  # only the analyst's grant is bounded
    assert env.plan("SELECT COUNT(*) AS n FROM visits", role="statistician",
                    epsilon=50).epsilon == 50.0


def test_the_policy_cap_is_shared_by_all_users(env: DpEnv, tmp_path: Path) -> None:
    bounded(env, tmp_path, cap="{epsilon: 1.5, delta: 1.0e-4}")
    env.ledger.apply_policy_caps(env.policy)
    assert env.ledger.dataset_caps() == {"health": (1.5, 1e-4, 0.0, 0.0)}
    env.run("SELECT COUNT(*) AS n FROM visits", user="alice", epsilon=1)
    table = env.run("SELECT COUNT(*) AS n FROM visits", user="bob")
    assert meta(table, "epsilon_remaining") == "0.0"  # bob's own 5 ε are capped
    with pytest.raises(BudgetExceededError, match="shared by all its users is exhausted"):
        env.run("SELECT SUM(cost) AS s FROM visits", user="carol", epsilon=0.1)
    # The policy no longer declares a cap: the next start removes it.
    env.ledger.apply_policy_caps(parse_policy(POLICY, base_dir=str(tmp_path)))
    assert env.ledger.dataset_caps() == {}
    assert env.ledger.balance("carol", "health").cap_epsilon is None


def test_an_owners_cap_outlasts_policy_changes_until_removed(env: DpEnv,
                                                             tmp_path: Path) -> None:
    bounded(env, tmp_path, cap="{epsilon: 1.5, delta: 1.0e-4}")
    env.ledger.set_dataset_cap("health", 4.0, 2e-4)  # the owner's, through the API
    env.ledger.apply_policy_caps(env.policy)  # a restart or a policy change
    assert env.ledger.dataset_caps() == {"health": (4.0, 2e-4, 0.0, 0.0)}
    without_cap = parse_policy(POLICY, base_dir=str(tmp_path))
    env.ledger.apply_policy_caps(without_cap)
    assert env.ledger.dataset_caps() == {"health": (4.0, 2e-4, 0.0, 0.0)}
    # Removed by the owner: the policy's own cap (if it declares one) applies again.
    env.ledger.set_dataset_cap("health", None, policy=env.policy)
    assert env.ledger.dataset_caps() == {"health": (1.5, 1e-4, 0.0, 0.0)}
    env.ledger.apply_policy_caps(without_cap)
    assert env.ledger.dataset_caps() == {}


def test_a_starting_domain_applies_the_policys_caps(env: DpEnv, tmp_path: Path) -> None:
    from gateway.domain import Domain

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("  health:\n    tables:\n",
                                     "  health:\n    budget_cap: {epsilon: 7, delta: 1.0e-5}\n"
                                     "    tables:\n", 1))
    domain = Domain.open(policy, tmp_path / "served")
    try:
        assert domain.ledger.dataset_caps() == {"health": (7.0, 1e-5, 0.0, 0.0)}
    finally:
        domain.close()
    policy.write_text(POLICY)
    domain = Domain.open(policy, tmp_path / "served")
    try:
        assert domain.ledger.dataset_caps() == {}
    finally:
        domain.close()


@pytest.mark.parametrize(("sql", "arrow_type"), [
    ("SELECT ROUND(AVG(cost), 2) AS c FROM visits", pa.float64()),
    ("SELECT SUM(cost)::int AS c FROM visits", pa.int32()),  # INTEGER, as in DuckDB
    ("SELECT CAST(SUM(cost) AS DOUBLE) / COUNT(*) AS c FROM visits", pa.float64()),
    ("SELECT CAST(COUNT(*) AS BIGINT) AS c FROM visits", pa.int64()),
])
def test_casts_and_rounding_keep_numeric_types(env: DpEnv, sql: str,
                                               arrow_type: pa.DataType) -> None:
    # DuckDB's type names (DOUBLE, BIGINT, ::int) are what analysts and dataframe
    # libraries write; they mean what they mean in DuckDB.
    table = env.run(sql)
    assert table.schema.field("c").type == arrow_type
    assert env.dp.result_schema(env.plan(sql)).field("c").type == arrow_type
    (value,) = table.column("c").to_pylist()
    assert isinstance(value, float if pa.types.is_floating(arrow_type) else int)


def test_public_keys_release_every_declared_group_and_only_those(env: DpEnv) -> None:
    # g takes the values 0..199 (1,000 people each); the owner declared 0-3 and 500-501.
    sql = "SELECT g, COUNT(*) AS n FROM keyed GROUP BY g"
    plan = env.plan(sql)
    assert plan.delta == 0.0  # no rare groups to hide: no δ
    assert env.dp.cost(plan) == Cost(0.5, 0.0)  # the count only, no key count
    table = env.dp.execute(plan)
    assert table["g"].to_pylist() == [0, 1, 2, 3, 500, 501]  # declared, in key order
    scale = float(table.schema.field("n").metadata[b"stockade.dp.scale"])
    n = table["n"].to_pylist()
    # Laplace(b) exceeds 30 b with probability e^-30.
    assert all(abs(v - 1000) < 30 * scale for v in n[:4])
    assert all(abs(v) < 30 * scale for v in n[4:])  # no rows: noisy zeros (made >= 0)
    # A key outside the declaration is never released, whatever the data.
    assert env.run("SELECT g, COUNT(*) AS n FROM keyed WHERE g >= 100 GROUP BY g"
                   )["g"].to_pylist() == [0, 1, 2, 3, 500, 501]


def test_public_keys_need_every_grouping_column_declared(env: DpEnv) -> None:
    plan = env.plan("SELECT g, id % 2 AS odd, COUNT(*) AS n FROM keyed GROUP BY g, id % 2")
    assert plan.query.public_keys is None and plan.delta > 0  # censored as usual


def test_having_and_order_by_on_unselected_aggregates_are_planned_and_priced(env: DpEnv
                                                                             ) -> None:
    # AVG(age) is not selected: it is measured (a sum and a count of age), priced before
    # anything runs, and evaluated on the noisy answer.
    sql = ("SELECT site, COUNT(*) AS n FROM visits GROUP BY site "
           "HAVING AVG(age) > 0 ORDER BY SUM(cost) DESC")
    plan = env.plan(sql)
    assert {m.name for m in plan.query.measures} == {
        "m_keys", "m_count", "m_sum_v1", "m_count_v1", "m_sum_v2"}
    assert env.dp.cost(plan).epsilon == 2.5  # five measurements at 0.5
    table = env.dp.execute(plan)
    assert table.column_names == ["site", "n"] and table.num_rows == 4
    assert float(table.schema.metadata[b"stockade.dp.epsilon_spent"]) == 2.5


def test_rows_come_in_group_key_order_without_order_by(env: DpEnv) -> None:
    # The release sorts by key before HAVING/ORDER BY/LIMIT: the order, and which groups
    # a LIMIT keeps, never depend on the engine's hash order.
    for i in range(5):
        table = env.run("SELECT site, COUNT(*) AS n FROM visits GROUP BY site LIMIT 2",
                        user=f"u{i}")
        assert table["site"].to_pylist() == ["site0", "site1"]
        assert table.schema.metadata[b"stockade.dp.order"] == b"group key"


def test_parts_take_squares_around_the_bounds_midpoint(env: DpEnv) -> None:
    # cost is bounded to [0, 100]. As parts for a network node, its squares are taken
    # around 50, so one row moves their sum by at most 50² = 2500, not 100² = 10000; the
    # variance is the same function of the noisy sums. A domain's own answer keeps 0.
    sql = "SELECT VAR_POP(cost) AS v FROM visits"
    for unclamped, centre, sensitivity in ((True, 50.0, 2500.0), (False, 0.0, 10_000.0)):
        plan = env.plan(sql, unclamped=unclamped)
        (squares,) = [m for m in plan.query.measures if m.kind == "sumsq"]
        assert (squares.centre, squares.sensitivity) == (centre, sensitivity)
        v = env.dp.execute(plan).schema.field("v").metadata
        assert v[b"stockade.dp.mechanism"] == b"laplace,laplace,laplace"  # one per draw
        # 2 rows per unit at ε 0.5: scale 4 per unit of sensitivity (OpenDP's search)
        scales = sorted(float(s) for s in v[b"stockade.dp.scale"].split(b","))
        assert scales == pytest.approx([4.0, 400.0, 4 * sensitivity], rel=1e-4)
        assert v.get(b"stockade.dp.centre") == (b"50.0" if unclamped else None)
    assert ("(CAST(\"c_v0\" AS DOUBLE) - 50.0) * (CAST(\"c_v0\" AS DOUBLE) - 50.0)"
            in env.dp.aggregate_sql(env.plan(sql, unclamped=True)))


class Shift:
    """A stand-in mechanism that adds known offsets (to check the release's algebra)."""

    def __init__(self, offsets: list[float], scale: float = 1.0) -> None:
        self.offsets, self.scale = offsets, scale

    def release(self, values: list[float]) -> list[float]:
        return [v + o for v, o in zip(values, self.offsets, strict=True)]


def test_unclamped_parts_carry_the_noisy_sums_exactly(env: DpEnv) -> None:
    """COUNT, AVG and VAR_POP released as parts determine the noisy Σx and Σx² exactly,
    a negative noisy count included; the analyst's release clamps them instead."""
    from gateway.dp.release import release

    query = env.plan("SELECT site, COUNT(cost) AS n, AVG(cost) AS a, VAR_POP(cost) AS v "
                     "FROM visits GROUP BY site", unclamped=True).query
    by_kind = {m.kind: m for m in query.measures}
    centre = by_kind["sumsq"].centre
    groups = {"a": [10.0, 20.0, 30.0, 90.0], "b": [0.0, 100.0, 50.0]}
    exact = pa.table({
        query.keys[0]: list(groups),
        "m_keys": [float(len(v)) for v in groups.values()],
        by_kind["count"].name: [float(len(v)) for v in groups.values()],
        by_kind["sum"].name: [sum(v) for v in groups.values()],
        by_kind["sumsq"].name: [sum((x - centre) ** 2 for x in v) for v in groups.values()],
    })
    e_n, e_s, e_q = [0.3, -5.7], [7.0, -11.0], [123.0, -456.0]  # b's noisy count is -2.7
    mechanisms = {"m_keys": Shift([0.0, 0.0]), by_kind["count"].name: Shift(e_n),
                  by_kind["sum"].name: Shift(e_s), by_kind["sumsq"].name: Shift(e_q)}

    def run(unclamped: bool) -> pa.Table:
        return release(query, exact, mechanisms, threshold=0.0, epsilon=0.5, delta=1e-6,
                       unclamped=unclamped)

    parts = run(True)
    assert parts.schema.field("n").type == pa.float64()  # counts as drawn
    for i, values in enumerate(groups.values()):
        n, a, v = (parts.column(c)[i].as_py() for c in ("n", "a", "v"))
        assert n == pytest.approx(len(values) + e_n[i], rel=1e-12)
        assert n * a == pytest.approx(sum(values) + e_s[i], rel=1e-12)
        # Σ(x − c)² + e_q = Q̂ − 2c·Ŝ + c²·N̂, so Q̂ = N̂·(VAR + AVG²) is Σx² + e_q + 2c·e_s − c²·e_n
        q = sum(x * x for x in values) + e_q[i] + 2 * centre * e_s[i] - centre**2 * e_n[i]
        assert n * (v + a * a) == pytest.approx(q, rel=1e-12)
    assert parts.schema.field("a").metadata[b"stockade.dp.null_when"] == \
        b"the noisy denominator is 0"

    clamped = run(False)
    assert clamped.schema.field("n").type == pa.int64()
    assert clamped.column("n").to_pylist() == [4, 0]  # rounded, and made >= 0
    assert clamped.column("a")[1].as_py() is None  # the noisy count is not positive
    assert clamped.column("v")[0].as_py() >= 0


def test_queries_differing_in_their_where_share_the_answer_schema_but_each_is_bound(
        env: DpEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.dp import queries

    releases: list[int] = []
    real = queries.release

    def counted(query, exact, *args, **kwargs):  # type: ignore[no-untyped-def]
        releases.append(exact.num_rows)
        return real(query, exact, *args, **kwargs)

    monkeypatch.setattr(queries, "release", counted)
    sql = "SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM visits WHERE cost > {} GROUP BY site"
    first = env.dp.result_schema(env.plan(sql.format(1)))
    second = env.plan(sql.format(2))
    assert env.dp.result_schema(second).equals(first, check_metadata=True)
    assert releases == [0]  # the release over no rows ran once, for the first query
    answer = env.dp.execute(second)
    assert [f.type for f in answer.schema] == [f.type for f in first]
    # A new WHERE is still bound by DuckDB before any charge: refused for free.
    bad = env.plan("SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM visits "
                   "WHERE site + 1 > 2 GROUP BY site")
    with pytest.raises(InputError, match="Binder Error"):
        env.dp.execute(bad)
    assert len(env.ledger.charges()) == 1


@pytest.mark.parametrize("where", ["cost > 3", "name = 'FROM \"health\".\"visits\"'",
                                   "name = '{marker}'"])
def test_the_snapshot_relation_is_the_one_parsing_gives(env: DpEnv, where: str) -> None:
    from gateway.dp import translate

    plan = env.plan("SELECT COUNT(*) AS n FROM visits WHERE "
                    + where.format(marker=translate._SOURCE.replace("'", "''")))
    query, reference = plan.query, '"__dp_bounded_0"."main"."bounded"'
    # The table is named in the relation, never the marker (but in the analyst's literal).
    assert query.relation_sql.count(translate._SOURCE) == ("marker" in where)
    parsed = translate.over_snapshot(query.relation_sql, "health", "visits", reference)
    assert translate.snapshot_relation(query, reference) == parsed
    # The marker written in a literal leaves no template (the relation is parsed instead).
    assert bool(query.relation_template) is ("marker" not in where)
    with env.engine.bounded_source("health", "visits") as snapshot:
        assert snapshot is not None
        assert snapshot.sql in env.dp.aggregate_sql(plan)
