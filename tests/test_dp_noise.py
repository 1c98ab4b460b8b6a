"""The noise has the scale the answer claims; the memoised scale is SmartNoise's.

Statistical checks use tolerances derived from the scale and the sample size:
for Laplace noise of scale b the variance is 2b², and the sample variance of n
draws has standard deviation b²·√(20/n) (fourth central moment 24b⁴). Bounds
are 6 standard deviations wide, so a correct implementation fails about once in
10⁸ runs, while a scale off by 30 % is caught.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from snsql.sql._mechanisms.gaussian import Gaussian
from snsql.sql._mechanisms.laplace import Laplace
from test_dp_env import open_env

from gateway.dp.mechanisms import (
    CachedGaussian,
    CachedLaplace,
    cache_info,
    ci95_half_width,
    clear_cache,
)


def _check_laplace(samples: list[float], center: float, b: float) -> None:
    n = len(samples)
    mean = statistics.fmean(samples)
    variance = statistics.pvariance(samples, mu=center)
    assert abs(mean - center) < 6 * math.sqrt(2 * b * b / n)
    assert abs(variance - 2 * b * b) < 6 * b * b * math.sqrt(20 / n)
    inside = sum(abs(x - center) <= ci95_half_width("laplace", b) for x in samples) / n
    assert abs(inside - 0.95) < 6 * math.sqrt(0.95 * 0.05 / n)


@pytest.mark.parametrize("epsilon, sensitivity, contrib", [
    (1.0, 1, 1), (0.5, 1, 2), (0.1, 100, 3), (2.0, 10, 1),
])
def test_memoised_scale_equals_smartnoises_search(epsilon: float, sensitivity: int,
                                                  contrib: int) -> None:
    clear_cache()
    ours = CachedLaplace(epsilon, sensitivity=sensitivity, max_contrib=contrib)
    theirs = Laplace(epsilon, sensitivity=sensitivity, max_contrib=contrib)
    assert ours.scale == theirs.scale
    again = CachedLaplace(epsilon, sensitivity=sensitivity, max_contrib=contrib)
    assert again.scale == theirs.scale and cache_info()["hits"] == 1


def test_memoised_gaussian_scale_equals_smartnoises_search() -> None:
    clear_cache()
    ours = CachedGaussian(1.0, delta=1e-6, sensitivity=1, max_contrib=1)
    assert ours.scale == Gaussian(1.0, delta=1e-6, sensitivity=1, max_contrib=1).scale
    assert CachedGaussian(1.0, delta=1e-5, sensitivity=1, max_contrib=1).scale != ours.scale


def test_cache_keys_on_every_parameter() -> None:
    clear_cache()
    a = CachedLaplace(1.0, sensitivity=1, max_contrib=1).scale
    assert CachedLaplace(1.0, sensitivity=1, max_contrib=2).scale == pytest.approx(2 * a)
    assert CachedLaplace(0.5, sensitivity=1, max_contrib=1).scale == pytest.approx(2 * a)
    assert CachedLaplace(1.0, sensitivity=3, max_contrib=1).scale == pytest.approx(3 * a)
    assert cache_info()["misses"] == 4


def test_released_noise_has_the_mechanisms_scale() -> None:
    mech = CachedLaplace(0.5, sensitivity=1, max_contrib=1)
    samples = mech.release([100.0] * 4000)
    _check_laplace(samples, 100.0, mech.scale)


def test_noisy_counts_have_the_claimed_scale(tmp_path: Path) -> None:
    env = open_env(tmp_path)
    samples: list[float] = []
    scales = set()
    for i in range(10):  # 10 queries × 200 groups of exactly 1,000 people
        table = env.run(f"SELECT g, COUNT(*) AS n FROM counts WHERE id >= -{i} GROUP BY g",
                        user="sam", role="statistician")
        assert table.num_rows == 200
        scales.add(table.schema.field("n").metadata[b"stockade.dp.scale"])
        samples += [float(v) for v in table["n"].to_pylist()]
    (scale,) = scales
    b = float(scale)
    assert 10.0 <= b < 10.001  # ε 0.1, one row per unit
    # Noisy counts are reported as integers (truncated toward zero): centre 999.5,
    # and the truncation adds at most 1/12 to a variance of 200.
    _check_laplace(samples, 999.5, b)
    assert env.ledger.balance("sam", "health").spent_epsilon == 2.0  # 10 × (count + key)
    env.close()


@pytest.mark.parametrize("unclamped", [False, True])
def test_the_numpy_bootstrap_of_a_ratio_is_duckdbs(tmp_path: Path, unclamped: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # AVG's per-row interval is computed in numpy; evaluating the same expression with
    # DuckDB over the same simulated draws (the generic path) gives the same widths.
    from gateway.dp import release

    env = open_env(tmp_path)
    plan = env.plan("SELECT site, COUNT(*) AS n, AVG(cost) AS c, VARIANCE(cost) AS v "
                    "FROM visits GROUP BY site")
    mechanisms = env.dp._checked(plan).mechanisms
    exact = env.engine.execute(env.dp.aggregate_sql(plan)).read_all()
    noisy = release.noisy_measurements(plan.query, exact, mechanisms,
                                       threshold=env.dp._checked(plan).threshold,
                                       unclamped=unclamped)
    answer = release._evaluate(plan.query, noisy, unclamped=unclamped)
    derived = [2, 3]  # AVG: numpy; VARIANCE: DuckDB either way
    assert release._ratio_parts(plan.query.outputs[2].sql) is not None
    assert release._ratio_parts(plan.query.outputs[3].sql) is None
    fast = release._simulated_widths(plan.query, noisy, answer, mechanisms, derived,
                                     unclamped=unclamped)
    monkeypatch.setattr(release, "_ratio_parts", lambda sql: None)
    slow = release._simulated_widths(plan.query, noisy, answer, mechanisms, derived,
                                     unclamped=unclamped)
    assert answer.num_rows > 0 and all(w is not None for w in fast[2])
    assert fast[2] == pytest.approx(slow[2], rel=1e-12)
    assert fast[3] == slow[3]
    env.close()
