"""The dp audit of issue 12: each class of attack, on two neighbouring datasets.

Two real gateways serve datasets that are identical except for one added person
(:mod:`tests.dp_audit`), whose values carry a canary: 'CANARY-RARE-DIAG/987654'
in every text column, 987654 in income and age (far outside the policy's
bounds), and a region nobody else has. An analyst queries both through ADBC,
and what they see must be distributed the same way (security invariant 6):

1. **failure oracles**: a query written to fail, or to fail with one of two
   messages, depending on one person's value has the same outcome on both
   datasets (success or failure, message text, ε charged), and the canary
   appears in no message, metadata or released key;
2. **charging**: a query that fails after its charge is charged exactly its
   cost, on both datasets, with one fixed message; a retry is charged again;
3. **order**: without ORDER BY, released rows come in group-key order, the same
   on both datasets in every run, and LIMIT keeps the same keys;
4. stale contribution bounds are audited in ``tests/test_dp_bounding.py``;
5. **intervals**: the reported 95 % intervals cover the true value at 95 %
   (± 1.5 points) for continuous outputs, and at least at their reported
   coverage for whole numbers (in process, on a domain over 200 groups of 300
   people: many draws per query);
6. **NULL, not 0**: an AVG whose noisy count is not positive is NULL, and the
   column's metadata says when;
7. **public keys**: every declared key is released, at no δ, on both datasets,
   whether or not the added person brings a key nobody else has.

Noisy values are checked only through tolerances derived from their noise scale
(each test says how); outcomes, messages and charges are compared exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.dp.queries import FAILED_AFTER_CHARGE
from gateway.dp.release import NULL_WHEN
from gateway.errors import QueryFailedError, StockadeError
from policy.principal import Principal
from tests.dp_audit import (
    CANARY,
    COVERAGE_SIZE,
    GROUPS,
    PASSWORD,
    PEOPLE,
    REGIONS,
    Coverage,
    Outcome,
    Running,
    coverage,
    coverage_domain,
    leaks,
    metadata_text,
    observe,
    start,
)

Pair = tuple[Running, Running]
_names = itertools.count()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Gateways over the dataset without (first) and with (second) the added person."""
    root = tmp_path_factory.mktemp("neighbours")
    without = start(root / "without", "without", added=False)
    try:
        with_one = start(root / "with", "with", added=True)
    except BaseException:
        without.stop()
        raise
    yield without, with_one
    without.stop()
    with_one.stop()


@pytest.fixture
def new_analyst(pair: Pair) -> Callable[[], str]:
    """Makes a fresh analyst on both gateways (own budget, nothing answered before)."""
    def make() -> str:
        name = f"auditor_{next(_names)}"
        for gateway in pair:
            gateway.domain.store.add_user(name, "analyst", PASSWORD, {})
        return name
    return make


@pytest.fixture(scope="module")
def analysts(pair: Pair) -> list[str]:
    """Three analysts shared by the module's tests (each logs in once per gateway).

    An answer is cached per analyst and query: a test that repeats one query
    asks each analyst once to get fresh answers; other tests vary their SQL.
    """
    names = [f"shared_{i}" for i in range(3)]
    for gateway in pair:
        for name in names:
            gateway.domain.store.add_user(name, "analyst", PASSWORD, {})
    return names


def preview(gateway: Running, user: str, sql: str) -> tuple[float, float] | None:
    """The (ε, δ) the gateway says ``sql`` costs, or None when it refuses the plan."""
    try:
        cost = gateway.domain.dp_cost(Principal(user, "analyst"), sql)
    except StockadeError:
        return None
    return (cost["epsilon"], cost["delta"])


def both(pair: Pair, user: str, sql: str) -> tuple[Outcome, Outcome]:
    first, second = (observe(g, user, sql) for g in pair)
    return first, second


def assert_same_and_silent(pair: Pair, user: str, sql: str, outcomes: tuple[Outcome, Outcome]
                           ) -> None:
    """Same outcome on both datasets; no canary anywhere; charged what it costs."""
    first, second = outcomes
    assert first.shape == second.shape, (
        f"the outcome depends on the added person:\n without: {first.shape}\n"
        f" with:    {second.shape}")
    for gateway, outcome in zip(pair, outcomes, strict=True):
        assert leaks(outcome.message) == [], outcome.message
        if outcome.table is not None:
            assert leaks(metadata_text(outcome.table)) == []
            assert leaks(str(outcome.table.to_pylist())) == []
        cost = preview(gateway, user, sql)
        if outcome.ok or FAILED_AFTER_CHARGE in outcome.message:
            assert cost is not None and outcome.charged == pytest.approx(cost, abs=1e-12)
        else:  # refused before the charge: by the plan, whatever the data
            assert outcome.charged == (0.0, 0.0)


# -- 1. failure oracles ---------------------------------------------------------------

#: Queries that fail (or not), or fail with one of two messages, depending on the
#: added person's values or on noise; the release is total, so none may differ.
ORACLES = [
    pytest.param("SELECT SQRT(COUNT(*) - 2000.5) AS r FROM clinic.people", id="sqrt-noisy"),
    pytest.param("SELECT LN(COUNT(*) - 2000) AS l, EXP(SUM(income)) AS e FROM clinic.people",
                 id="ln-exp-noisy"),
    pytest.param("SELECT CAST(SUM(income) AS TINYINT) AS s, "
                 "CAST(COUNT(*) - 2000 AS UTINYINT) AS u FROM clinic.people",
                 id="cast-overflow-noisy"),
    pytest.param("SELECT COUNT(*) * 9223372036854775807 AS big, POWER(10.0, COUNT(*)) AS p "
                 "FROM clinic.people", id="overflow-inf-noisy"),
    pytest.param("SELECT SUM(income) / (COUNT(*) - 2000) AS d, COUNT(*) // (COUNT(*) - 2000) "
                 "AS q, COUNT(*) % (COUNT(*) - 2000) AS m FROM clinic.people",
                 id="division-by-noisy-zero"),
    pytest.param("SELECT grp FROM clinic.people GROUP BY grp HAVING SQRT(AVG(income) - 50) > 0",
                 id="having-unselected"),
    pytest.param("SELECT grp FROM clinic.people GROUP BY grp ORDER BY LN(SUM(income) - 10000)",
                 id="order-by-unselected"),
    pytest.param("SELECT COUNT(*) AS n FROM clinic.people "
                 "WHERE CAST(CASE WHEN income > 1000 THEN 'x' ELSE 'y' END AS INTEGER) = 0",
                 id="fails-everywhere-naming-a-value"),
    pytest.param("SELECT COUNT(*) AS n FROM clinic.people WHERE CASE WHEN diag LIKE 'C%' "
                 "THEN CAST(code AS INTEGER) ELSE CAST('a' || code AS INTEGER) END > 0",
                 id="one-of-two-messages"),
    pytest.param("SELECT diag, COUNT(*) AS n FROM clinic.people GROUP BY diag",
                 id="rare-key-censored"),
]

TOTALITY = pytest.mark.xfail(strict=True, raises=AssertionError,
                             reason="needs plan-time totality checks (branch totality)")

#: The same, raised while the data is read (outside TRY): on main the added person's
#: row turns a success into FAILED_AFTER_CHARGE. They pass once functions that can
#: raise on data values are refused at plan time or evaluated under TRY.
DATA_ERRORS = [
    pytest.param("SELECT COUNT(*) AS n FROM clinic.people WHERE CAST(code AS INTEGER) > 0",
                 id="cast-text", marks=TOTALITY),
    pytest.param("SELECT COUNT(*) AS n FROM clinic.people WHERE CAST(age AS SMALLINT) % 2 = 0",
                 id="cast-overflow", marks=TOTALITY),
    pytest.param("SELECT COUNT(*) AS n FROM clinic.people WHERE (age * 100000) % 7 >= 0",
                 id="arithmetic-overflow", marks=TOTALITY),
    pytest.param("SELECT COUNT(*) AS n FROM clinic.people WHERE timezone(tz, ts) IS NOT NULL",
                 id="timezone-echo", marks=TOTALITY),
    pytest.param("SELECT COUNT(*) AS n FROM clinic.people "
                 "WHERE regexp_matches(code, replace(diag, '/', '('))",
                 id="regexp-echo", marks=TOTALITY),
    pytest.param("SELECT CAST(code AS INTEGER) % 2 AS parity, COUNT(*) AS n "
                 "FROM clinic.people GROUP BY CAST(code AS INTEGER) % 2",
                 id="group-key-cast", marks=TOTALITY),
]


@pytest.mark.parametrize("sql", ORACLES + DATA_ERRORS)
def test_failure_oracles_see_the_same_outcome_on_neighbours(
        pair: Pair, analysts: list[str], sql: str) -> None:
    # Three fresh answers each (another analyst each time, so nothing comes from the
    # result cache): an outcome decided by noise (a square root of a count that is
    # negative half the time) would differ between runs or datasets with
    # probability about 1/2 per run.
    for user in analysts:
        assert_same_and_silent(pair, user, sql, both(pair, user, sql))


# -- 2. charging ----------------------------------------------------------------------

@pytest.mark.parametrize("failure", [
    QueryFailedError(f"Out of Memory Error: failed to allocate while reading '{CANARY}'"),
    MemoryError(f"row {CANARY}"),
], ids=["engine-error", "memory-error"])
def test_a_failure_after_the_charge_is_charged_its_cost_with_one_message(
        pair: Pair, new_analyst: Callable[[], str], monkeypatch: pytest.MonkeyPatch,
        failure: BaseException) -> None:
    # The engine fails while reading (as out of memory would), with a text that
    # echoes a value: the analyst gets the one fixed message and pays the full
    # cost, on both datasets; the owner's audit log keeps the detail.
    sql = "SELECT grp, COUNT(*) AS n, AVG(income) AS a FROM clinic.people GROUP BY grp"
    user = new_analyst()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise failure

    for gateway in pair:
        monkeypatch.setattr(gateway.domain.dp.engine, "execute", fail)
    cost = preview(pair[0], user, sql)
    assert cost == (4.0, 1e-6)  # key count, COUNT(*), SUM and COUNT of income at ε 1
    for attempt in (1, 2):  # nothing refunds: a retry is charged again
        outcomes = both(pair, user, sql)
        assert_same_and_silent(pair, user, sql, outcomes)
        for gateway, outcome in zip(pair, outcomes, strict=True):
            assert not outcome.ok and FAILED_AFTER_CHARGE in outcome.message
            assert outcome.charged == cost
            balance = gateway.domain.ledger.balance(user, "clinic")
            assert (balance.spent_epsilon, balance.spent_delta) == pytest.approx(
                (attempt * cost[0], attempt * cost[1]), abs=1e-12)
    for gateway in pair:
        details = [r.details for r in gateway.domain.audit.records(user=user)
                   if r.kind == "query"]
        assert len(details) == 2 and all(d["epsilon"] == cost[0] for d in details)
        assert all(CANARY in d["error_detail"] for d in details)  # for the owner only


def test_a_query_refused_at_plan_time_is_refused_alike_and_free(
        pair: Pair, analysts: list[str]) -> None:
    # Refusals depend on the SQL and the schema only: an unknown column, an
    # unbounded SUM, MIN (which would release one person's value).
    user = analysts[0]
    for sql in ("SELECT SUM(code) AS s FROM clinic.people",
                "SELECT MIN(income) AS m FROM clinic.people",
                "SELECT COUNT(*) AS n FROM clinic.people WHERE pid = 2000"):
        outcomes = both(pair, user, sql)
        assert not outcomes[0].ok
        assert_same_and_silent(pair, user, sql, outcomes)


# -- 3. order -------------------------------------------------------------------------

RUNS = 50


def keys(outcome: Outcome, *names: str) -> list[tuple[Any, ...]]:
    assert outcome.table is not None, outcome.message
    assert outcome.table.schema.metadata[b"stockade.dp.order"] == b"group key"
    columns = [outcome.table.column(n).to_pylist() for n in names]
    return list(zip(*columns, strict=True))


def test_released_order_is_the_key_order_on_both_neighbours_in_every_run(
        pair: Pair, analysts: list[str]) -> None:
    # 20 groups of 100 people (region × grp); the added person makes a 21st group
    # of one ('atlantis', 'g3') on one side only. At ε 1 and δ 1e-6 the key count
    # has Laplace scale 1 and censoring threshold 14.1: a group of 100 is released
    # unless its draw is below -85.9 (probability e^-85.9 / 2), the group of one
    # with probability below δ per run.
    user = analysts[0]
    expected = sorted({(REGIONS[i % 4], f"g{i % GROUPS}") for i in range(PEOPLE)})
    assert len(expected) == 20
    for run in range(RUNS):
        sql = (f"SELECT region, grp, COUNT(*) AS n FROM clinic.people WHERE age <> -{run} "
               "GROUP BY region, grp")
        first, second = both(pair, user, sql)
        assert keys(first, "region", "grp") == keys(second, "region", "grp") == expected


def test_limit_without_order_by_keeps_the_same_keys_on_both_neighbours(
        pair: Pair, analysts: list[str]) -> None:
    # Ten groups of 200: all released (as above: a draw below -185.9 would censor one);
    # LIMIT keeps the first three in key order, on both datasets, in every run.
    user = analysts[0]
    for run in range(RUNS):
        sql = (f"SELECT grp, COUNT(*) AS n FROM clinic.people WHERE income <> -{run} "
               "GROUP BY grp LIMIT 3")
        first, second = both(pair, user, sql)
        assert keys(first, "grp") == keys(second, "grp") == [("g0",), ("g1",), ("g2",)]


# -- 5. intervals ---------------------------------------------------------------------

#: Fresh queries per ε: 15 × 200 groups = 3,000 draws per column, a binomial
#: standard error of 0.40 points at 95 %, so ± 1.5 points is 3.75 standard errors.
COVERAGE_QUERIES = 15
CONTINUOUS = ("sum", "avg", "var", "stddev")
WHOLE = ("count", "sum_int")


@pytest.fixture(scope="module")
def draws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[float],
                                                                         dict[str, Coverage]]]:
    """The coverage of every column at one ε, measured once per ε for the module."""
    root = tmp_path_factory.mktemp("coverage")
    measured: dict[float, dict[str, Coverage]] = {}
    with coverage_domain(root) as (domain, truth):
        def at(epsilon: float) -> dict[str, Coverage]:
            if epsilon not in measured:
                measured[epsilon] = coverage(domain, truth, epsilon, COVERAGE_QUERIES)
            return measured[epsilon]
        yield at


def _short(epsilon: float, column: str) -> str:
    return f"{column}-eps{epsilon:g}"


def _measured(figure: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
        f"the reported 95 % interval covers {figure} (4,000 draws, groups of "
        f"{COVERAGE_SIZE}, python -m bench.dp_coverage --queries 20): a variance is "
        "released made non-negative, and its interval is that of the unclamped estimate, "
        "so when the noise is comparable to the variance the clamp (towards the truth) "
        "makes it cover more than 95 %"))


#: Cells measured outside 95 % ± 1.5: not loosened, marked until the intervals match.
UNDERCOVERED = {(0.1, "var"): _measured("97.55 % ± 0.24")}


@pytest.mark.parametrize(("epsilon", "column"), [
    pytest.param(e, c, id=_short(e, c), marks=UNDERCOVERED.get((e, c), ()))
    for e in (0.1, 1.0, 10.0) for c in CONTINUOUS])
def test_continuous_intervals_cover_95_percent(
        draws: Callable[[float], dict[str, Coverage]], epsilon: float, column: str) -> None:
    found = draws(epsilon)[column]
    assert found.draws >= 2000  # a binomial standard error of at most 0.49 points at 95 %
    assert abs(found.rate - 0.95) <= 0.015, (
        f"{column} at ε {epsilon}: {100 * found.rate:.2f} % ± {100 * found.se:.2f} "
        f"of {found.draws} intervals hold the truth")


@pytest.mark.parametrize(("epsilon", "column"), [
    pytest.param(e, c, id=_short(e, c)) for e in (0.1, 1.0, 10.0) for c in WHOLE])
def test_whole_number_intervals_cover_what_they_report(
        draws: Callable[[float], dict[str, Coverage]], epsilon: float, column: str) -> None:
    # A whole-number answer reports the smallest whole half-width covering at least
    # 95 %, and that coverage (ci95_coverage): the measured rate must be at least
    # 95 % - 1.5 and equal to the reported one within 3 standard errors.
    found = draws(epsilon)[column]
    assert found.draws >= 2000 and len(found.reported) == found.draws
    claimed = found.claimed
    se = math.sqrt(claimed * (1 - claimed) / found.draws)
    assert found.rate >= 0.95 - 0.015
    assert abs(found.rate - claimed) <= 3 * se, (
        f"{column} at ε {epsilon}: {100 * found.rate:.2f} % of {found.draws} intervals "
        f"hold the truth, {100 * claimed:.2f} % reported (3 SE = {300 * se:.2f})")


# -- 6. NULL, not 0 -------------------------------------------------------------------

def test_avg_over_a_tiny_group_is_null_when_its_noisy_count_is_not_positive(
        pair: Pair, analysts: list[str]) -> None:
    # Three people (ages 0, region east, diag flu) at ε 0.1: COUNT(income) is the
    # very measurement AVG divides by, Laplace scale b = 10, rounded to nearest and
    # made at least 0. It is 0 when 3 + L < 0.5: p = e^(-2.5/b) / 2 = 0.389. Over 40
    # fresh answers the number of NULLs is binomial: within 5 standard deviations.
    user = analysts[0]
    runs, nulls = 40, 0
    gateway = pair[1]
    scale = math.nan
    for run in range(runs):
        sql = ("/* epsilon: 0.1 */ SELECT COUNT(income) AS c, AVG(income) AS a "
               f"FROM clinic.people WHERE age = 0 AND region = 'east' AND diag = 'flu' "
               f"AND income <> -{run}")
        outcome = observe(gateway, user, sql)
        assert outcome.ok and outcome.table is not None, outcome.message
        (c,), (a,) = outcome.table.column("c").to_pylist(), outcome.table.column("a").to_pylist()
        field = outcome.table.schema.field("a").metadata
        assert field[b"stockade.dp.null_when"] == NULL_WHEN.encode()
        scale = float(outcome.table.schema.field("c").metadata[b"stockade.dp.scale"])
        assert c >= 0
        assert (a is None) == (c == 0), (c, a)  # never 0.0 for a non-positive count
        nulls += a is None
    p = math.exp(-2.5 / scale) / 2
    assert 9.99 < scale < 10.01
    assert abs(nulls - runs * p) <= 5 * math.sqrt(runs * p * (1 - p)), nulls


# -- 7. public keys -------------------------------------------------------------------

@pytest.mark.parametrize(("table", "declared"), [
    ("people", ["atlantis", "east", "north", "south", "west"]),  # only the added has it
    ("known", ["east", "north", "south", "west"]),  # the added person's key undeclared
])
def test_public_keys_release_every_declared_key_at_no_delta(
        pair: Pair, analysts: list[str], table: str, declared: list[str]) -> None:
    user = analysts[0]
    for run in range(10):
        sql = (f"SELECT region, COUNT(*) AS n, AVG(income) AS a FROM clinic.{table} "
               f"WHERE age <> -{run} GROUP BY region")
        outcomes = both(pair, user, sql)
        assert_same_and_silent(pair, user, sql, outcomes)
        for outcome in outcomes:
            assert [k for (k,) in keys(outcome, "region")] == declared
            assert outcome.charged == (3.0, 0.0)  # COUNT(*), SUM and COUNT of income
            meta = outcome.table.schema.metadata  # type: ignore[union-attr]
            assert float(meta[b"stockade.dp.delta_spent"]) == 0.0
    # Without public keys the same grouping censors rare groups, and pays δ for it.
    sql = "SELECT grp, COUNT(*) AS n FROM clinic.people GROUP BY grp"
    assert preview(pair[0], user, sql) == (2.0, 1e-6)

