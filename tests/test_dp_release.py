"""The release's shortcuts give what DuckDB gives: same rows, order, values and types.

:func:`gateway.dp.release._evaluate` evaluates the common shape (keys, counts and
``AVG`` with no HAVING, ORDER BY or LIMIT) without DuckDB; everything else, and any
shape whose types would differ, goes to DuckDB. Each case below runs both ways on
the same noisy measurements and compares the Arrow tables exactly.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from test_dp_env import DpEnv, open_env

from gateway.dp import release


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    e = open_env(tmp_path_factory.mktemp("release"))
    yield e
    e.close()


KEYS = ["site1", None, "Ärzte", "site0", "", "Zeta", "zeta", "site1 ", "é", "a"]


def exact_table(plan, keys: list[object], key_type: pa.DataType) -> pa.Table:  # type: ignore[no-untyped-def]
    """Exact measurements with the given keys: whole-number counts, some zero."""
    query = plan.query
    columns: dict[str, pa.Array] = {k: pa.array(keys, key_type) for k in query.keys}
    for i, m in enumerate(query.measures):
        values = [(j * 37 + i * 11) % 9 for j in range(len(keys))]
        columns[m.name] = pa.array(values, pa.int64() if m.kind in ("keys", "count")
                                   else pa.float64())
    return pa.table(columns)


def both_ways(env: DpEnv, sql: str, exact_keys: list[object], key_type: pa.DataType, *,
              unclamped: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[pa.Table, pa.Table]:
    plan = env.plan(sql)
    priced = env.dp._checked(plan)
    exact = exact_table(plan, exact_keys, key_type)
    # No censoring here: every group is kept, so rows with zero counts are released.
    noisy = release.noisy_measurements(plan.query, exact, priced.mechanisms,
                                       threshold=-1e300, unclamped=unclamped)
    fast = release._evaluate(plan.query, noisy, unclamped=unclamped)
    with monkeypatch.context() as m:
        m.setattr(release, "_evaluate_simple", lambda *a, **k: None)
        slow = release._evaluate(plan.query, noisy, unclamped=unclamped)
    return fast, slow


@pytest.mark.parametrize("unclamped", [False, True])
@pytest.mark.parametrize(("sql", "keys", "key_type"), [
    ("SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM visits GROUP BY site", KEYS, pa.string()),
    ("SELECT AVG(cost) AS c, site, COUNT(cost) AS k FROM visits GROUP BY site", KEYS,
     pa.string()),
    ("SELECT age, COUNT(*) AS n FROM visits GROUP BY age", [5, None, -3, 0, 2**40, 7, 1, 2, 3, 4],
     pa.int64()),
    ("SELECT consent, AVG(cost) AS c FROM visits GROUP BY consent", [True, None, False],
     pa.bool_()),
    ("SELECT COUNT(*) AS n, AVG(age) AS a FROM visits", [], pa.null()),
])
def test_the_common_shape_is_evaluated_as_duckdb_would(
        env: DpEnv, sql: str, keys: list[object], key_type: pa.DataType, unclamped: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = release._evaluate_simple

    def spy(query, noisy, text, **kwargs):  # type: ignore[no-untyped-def]
        found = real(query, noisy, text, **kwargs)
        calls.append("numpy" if found is not None else "duckdb")
        return found

    monkeypatch.setattr(release, "_evaluate_simple", spy)
    fast, slow = both_ways(env, sql, keys or [None], key_type, unclamped=unclamped,
                           monkeypatch=monkeypatch)
    # The shortcut was taken, and DuckDB gave the same; parts for a network node (unclamped)
    # guard a ratio only at a zero count, a shape the shortcut leaves to DuckDB.
    assert calls[-1] == ("duckdb" if unclamped and "AVG" in sql else "numpy")
    assert fast.schema.equals(slow.schema)
    assert fast.to_pydict() == slow.to_pydict()
    assert fast.num_rows == max(1, len(keys))


@pytest.mark.parametrize("sql", [
    "SELECT site, COUNT(*) AS n FROM visits GROUP BY site HAVING COUNT(*) > 2",
    "SELECT site, COUNT(*) AS n FROM visits GROUP BY site ORDER BY n DESC",
    "SELECT site, COUNT(*) AS n FROM visits GROUP BY site LIMIT 2",
    "SELECT site, COUNT(*) + 1 AS n FROM visits GROUP BY site",
    "SELECT site, SUM(age) AS s FROM visits GROUP BY site",
    "SELECT cost, COUNT(*) AS n FROM visits GROUP BY cost",  # a DOUBLE key: DuckDB orders
])
def test_other_shapes_are_evaluated_by_duckdb(env: DpEnv, sql: str) -> None:
    plan = env.plan(sql)
    priced = env.dp._checked(plan)
    key_type = pa.float64() if "GROUP BY cost" in sql else pa.string()
    keys: list[object] = [1.5, None, -0.0, 0.0] if "GROUP BY cost" in sql else KEYS
    noisy = release.noisy_measurements(plan.query, exact_table(plan, keys, key_type),
                                       priced.mechanisms, threshold=-1e300, unclamped=False)
    # (the SQL text only matters to a shape the shortcut takes: none of these)
    assert release._evaluate_simple(plan.query, noisy, "SELECT 1", unclamped=False) is None


def test_a_released_answer_takes_the_shortcut_and_keeps_its_schema(env: DpEnv, tmp_path: Path
                                                                   ) -> None:
    plan = env.plan("SELECT site, COUNT(*) AS n, AVG(cost) AS c FROM visits "
                    "WHERE age > 3 GROUP BY site")
    schema = env.dp.result_schema(plan)
    answer = env.dp.execute(plan)
    assert [f.type for f in answer.schema] == [f.type for f in schema]
    assert answer.column("site").to_pylist() == sorted(answer.column("site").to_pylist())
