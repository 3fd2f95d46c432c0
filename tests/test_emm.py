"""EMM estimation on synthetic ratio curves with known answers, and the two search strategies."""

import math

import numpy as np
import pytest

from diffmem.studies.emm import SizePoint, adaptive_search, crossing, estimate_emm, grid_search
from diffmem.errors import InputError

# ratio = A - B·ln|D|: linear in log size, so interpolation in log size is exact.
A, B = 1.9, 0.25
EXACT = math.exp((A - 0.9) / B)  # ratio = 0.9 here: 54.6


def linear_points(sizes, half_width=0.0):
    return [SizePoint(s, A - B * math.log(s), (A - B * math.log(s) - half_width, A - B * math.log(s) + half_width),
                      200, 1000 * s) for s in sizes]


def test_interpolation_in_log_size_is_exact_on_a_log_linear_curve():
    est = estimate_emm(linear_points([8, 32, 128, 512]))
    assert est.status == "ok" and est.bracket == (32, 128)
    assert est.emm == pytest.approx(EXACT, rel=1e-12)
    assert est.compute == 1000 * (8 + 32 + 128 + 512)


def test_interval_follows_the_confidence_intervals():
    """Every ratio shifted by ±δ moves the crossing to exp((A ± δ - 0.9)/B): the interval's ends."""
    d = 0.05
    est = estimate_emm(linear_points([8, 32, 128, 512], half_width=d))
    lo, hi = est.interval
    assert lo == pytest.approx(math.exp((A - d - 0.9) / B), rel=1e-12)
    assert hi == pytest.approx(math.exp((A + d - 0.9) / B), rel=1e-12)
    assert lo < est.emm < hi


def test_interval_end_beyond_the_measured_sizes_is_open():
    pts = [SizePoint(16, 0.95, (0.85, 1.0)), SizePoint(32, 0.88, (0.8, 0.95))]
    est = estimate_emm(pts)
    assert est.emm == pytest.approx(16 * 2 ** (0.05 / 0.07))
    assert est.interval == (0.0, math.inf)  # the lower CIs never reach 0.9, the upper ones always do
    assert est.to_dict()["interval"] == [None, None]  # strict JSON


def test_emm_is_the_largest_size_that_still_memorizes():
    """EMM = max{|D| : ratio ≥ 1-ε}: with a dip and recovery, the last crossing counts."""
    pts = [SizePoint(8, 1.0, (0.99, 1.0)), SizePoint(16, 0.85, (0.8, 0.9)), SizePoint(32, 0.95, (0.92, 0.98)),
           SizePoint(64, 0.2, (0.15, 0.25))]
    est = estimate_emm(pts)
    assert est.bracket == (32, 64)
    assert est.violations == [(16, 32)]  # ratio rose with |D| beyond both CIs: Hypothesis 1 violated
    assert "Hypothesis 1 is violated" in est.advice and "16→32" in est.advice


def test_rising_ratio_within_the_cis_is_not_a_violation():
    pts = [SizePoint(8, 0.93, (0.9, 0.96)), SizePoint(16, 0.95, (0.92, 0.98)), SizePoint(32, 0.5, (0.4, 0.6))]
    assert estimate_emm(pts).violations == []


def test_no_bracket_says_so_and_what_to_try():
    above = estimate_emm([SizePoint(8, 1.0, (1, 1)), SizePoint(64, 0.95, (0.93, 0.97))])
    assert above.status == "all_above" and above.emm is None and above.bracket is None
    assert "EMM > 64" in above.advice and "512" in above.advice
    below = estimate_emm([SizePoint(16, 0.5, (0.4, 0.6)), SizePoint(64, 0.1, (0.05, 0.15))])
    assert below.status == "all_below" and below.emm is None
    assert "EMM < 16" in below.advice and "down to 2" in below.advice


def test_crossing_helper():
    assert crossing([1, 10], [1.0, 0.0], 0.5) == pytest.approx(math.sqrt(10))
    assert crossing([1, 10], [1.0, 0.95], 0.9) == math.inf
    assert crossing([1, 10], [0.5, 0.1], 0.9) == 0.0


def test_bad_input():
    with pytest.raises(InputError) as err:
        estimate_emm([])
    assert err.value.param == "sizes"
    with pytest.raises(InputError):
        estimate_emm(linear_points([8, 8]))
    for eps in (0, 1, math.nan, -0.1):
        with pytest.raises(InputError) as err:
            estimate_emm(linear_points([8, 16]), eps)
        assert err.value.param == "epsilon"


def _logistic(emm, k=2.5):
    ln_m = math.log(emm) - math.log(1 / 9) / k
    return lambda s: 1 / (1 + math.exp(k * (math.log(s) - ln_m)))


def _measurer(emm, seed=0, n=400):
    p = _logistic(emm)
    calls = []

    def draw(size, n=n):
        flags = np.random.default_rng([seed, size, n]).random(n) < p(size)
        r, half = flags.mean(), 1.96 * math.sqrt(max(p(size) * (1 - p(size)), 1e-4) / n)
        calls.append((size, n))
        return SizePoint(size, float(r), (max(r - half, 0.0), min(r + half, 1.0)), n, 1000 * size)

    return draw, (lambda point, n: draw(point.size, n)), calls


GRID = [8 * 2**k for k in range(10)]


@pytest.mark.parametrize("emm", [20, 60, 180, 500])
def test_adaptive_search_matches_the_grid_with_half_the_compute(emm):
    """At the grid's resolution the adaptive climb measures the grid's sizes up to the bracket only:
    the same estimate and interval, at ≤ 50 % of the compute (benchmarks/bench_emm_search.py)."""
    measure, _, _ = _measurer(emm)
    grid = grid_search(measure, GRID)
    adaptive = adaptive_search(measure, min_size=8, max_size=GRID[-1], factor=2, resolution=2)
    assert adaptive.emm == grid.emm and adaptive.interval == grid.interval
    assert adaptive.compute <= 0.5 * grid.compute
    assert abs(math.log(grid.emm / emm)) < 0.3


@pytest.mark.parametrize("emm", [20, 60, 180, 500])
def test_finer_adaptive_search_is_more_precise(emm):
    measure, remeasure, calls = _measurer(emm, n=200)
    fine = adaptive_search(measure, min_size=8, max_size=GRID[-1], factor=2, resolution=1.25,
                           remeasure=remeasure, max_samples=800)
    a, b = fine.bracket
    assert b / a <= 1.25
    assert abs(math.log(fine.emm / emm)) < 0.1
    assert fine.compute < 0.5 * sum(1000 * s for s in GRID)
    # more samples, not more runs, where a CI straddles 1 - ε: the size is re-measured with 2n, 4n
    trained = {s for s, _ in calls}
    assert len(trained) == len(fine.points)
    assert all(p.n_generated in (200, 400, 800) for p in fine.points)


def test_adaptive_search_reports_a_missing_bracket():
    measure, _, _ = _measurer(10_000)
    est = adaptive_search(measure, min_size=8, max_size=256)
    assert est.status == "all_above" and max(p.size for p in est.points) == 256
