"""Effective model memorization (EMM, Gu et al. 2025, Definition 1) from ratios measured at several |D|.

    EMM_ε = max{ |D| : E[ratio(|D|)] ≥ 1 - ε },   ε = 0.1 by default.

Hypothesis 1 of the paper: the ratio falls as |D| grows. Measured at sizes ``s_1 < … < s_k`` with
ratios ``r_i``, the estimate takes the largest measured size whose ratio reaches ``1 - ε`` and the
next larger size (whose ratio does not), and interpolates linearly in ``log |D|``:

    log EMM = log s_a + (r_a - (1-ε)) / (r_a - r_b) · (log s_b - log s_a).

The interval comes from the ratios' 95 % CIs: the estimate is increasing in every ratio, so it lies
between the same construction on the CIs' lower ends and on their upper ends. A pair of sizes whose
ratio *rises* with |D| beyond both CIs violates Hypothesis 1 and is reported, not smoothed over.

Two search strategies over a ``measure(size)`` function (training compute = epochs × |D| per run):
:func:`grid_search` (every size of a fixed grid) and :func:`adaptive_search` (climb geometrically
from the smallest size until the ratio falls below 1 - ε, then narrow the bracket in log |D| by
interpolation; where a ratio's CI straddles 1 - ε, measure more samples of the same run instead
of training another).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from diffmem.errors import InputError, check_number


@dataclass(frozen=True)
class SizePoint:
    """The memorization ratio measured at one training-set size."""

    size: int
    ratio: float
    ci95: tuple[float, float]
    n_generated: int = 0
    compute: float = 0.0  # training images processed (epochs × |D|)
    run: str | None = None  # the run folder behind it, if any
    epoch: float | None = None  # the epoch of the highest ratio (seed 001 reports the maximum)


@dataclass(frozen=True)
class EMMEstimate:
    """EMM_ε with its interval, the bracket it came from, and what went wrong if anything."""

    epsilon: float
    emm: float | None  # None when no bracket was found
    interval: tuple[float, float] | None  # 0 / inf for an open end
    bracket: tuple[int, int] | None  # (largest size ≥ 1-ε, the next size)
    status: str  # "ok" | "all_above" | "all_below"
    advice: str  # one line: what the estimate means or which sizes to try
    violations: list[tuple[int, int]] = field(default_factory=list)  # Hypothesis 1: ratio rose from a to b
    points: list[SizePoint] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return 1.0 - self.epsilon

    @property
    def compute(self) -> float:
        return sum(p.compute for p in self.points)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threshold"], d["compute"] = self.threshold, self.compute
        if self.interval is not None:
            d["interval"] = [_finite_or_none(v) for v in self.interval]
        return d


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) and v > 0 else None


def crossing(sizes: list[float], ratios: list[float], threshold: float) -> float | None:
    """Where the piecewise-linear (in log size) ratio curve last reaches ``threshold``: the largest
    size with ratio ≥ threshold, interpolated toward the next one. ``inf`` when the last size still
    reaches it, ``0`` when none does."""
    above = [i for i, r in enumerate(ratios) if r >= threshold]
    if not above:
        return 0.0
    a = above[-1]
    if a == len(sizes) - 1:
        return math.inf
    b = a + 1
    ra, rb = ratios[a], ratios[b]
    frac = (ra - threshold) / (ra - rb)
    return math.exp(math.log(sizes[a]) + frac * (math.log(sizes[b]) - math.log(sizes[a])))


def hypothesis_violations(points: list[SizePoint]) -> list[tuple[int, int]]:
    """Consecutive sizes whose ratio rises with |D| beyond both CIs (lower end of the larger size's
    CI above the upper end of the smaller's)."""
    return [(p.size, q.size) for p, q in zip(points, points[1:]) if q.ci95[0] > p.ci95[1]]


def estimate_emm(points: list[SizePoint], epsilon: float = 0.1) -> EMMEstimate:
    """EMM_ε from ratios at several sizes (see the module docstring)."""
    epsilon = check_number("epsilon", epsilon, lo=0, hi=1, lo_open=True, hi_open=True)
    if not points:
        raise InputError("no measured sizes", param="sizes")
    points = sorted(points, key=lambda p: p.size)
    if len({p.size for p in points}) != len(points):
        raise InputError("a size was measured twice", param="sizes")
    thr = 1.0 - epsilon
    sizes = [p.size for p in points]
    est = crossing(sizes, [p.ratio for p in points], thr)
    lo = crossing(sizes, [p.ci95[0] for p in points], thr)
    hi = crossing(sizes, [p.ci95[1] for p in points], thr)
    violations = hypothesis_violations(points)
    note = f" Hypothesis 1 is violated between |D| = {', '.join(f'{a}→{b}' for a, b in violations)}." if violations else ""
    if est == math.inf:
        return EMMEstimate(epsilon, None, None, None, "all_above",
                           f"every size up to {sizes[-1]} memorizes ≥ {thr:g}: EMM > {sizes[-1]}; "
                           f"try sizes up to {sizes[-1] * 8}.{note}", violations, points)
    if est == 0.0:
        return EMMEstimate(epsilon, None, None, None, "all_below",
                           f"no size from {sizes[0]} memorizes ≥ {thr:g}: EMM < {sizes[0]}; "
                           f"try sizes down to {max(sizes[0] // 8, 2)} (or train longer).{note}", violations, points)
    a = max(i for i, p in enumerate(points) if p.ratio >= thr)
    bracket = (sizes[a], sizes[a + 1])
    return EMMEstimate(epsilon, est, (lo, hi), bracket, "ok",
                       f"EMM_{epsilon:g} ≈ {est:.0f} (95 % interval {_fmt(lo)} – {_fmt(hi)}), between |D| = "
                       f"{bracket[0]} and {bracket[1]}.{note}", violations, points)


def _fmt(v: float) -> str:
    return "<" + str(0) if v == 0 else ("∞" if v == math.inf else f"{v:.0f}")


# ---------------------------------------------------------------------------------------------
# Search strategies. ``measure(size)`` trains (or looks up) a run at ``size`` and returns its
# SizePoint; ``remeasure(point, num)`` measures the same run again with ``num`` samples.


def grid_search(measure: Callable[[int], SizePoint], sizes, epsilon: float = 0.1) -> EMMEstimate:
    """Measure every size of the grid, then estimate."""
    sizes = sorted({check_number("sizes", s, lo=2, integer=True) for s in sizes})
    return estimate_emm([measure(s) for s in sizes], epsilon)


def _straddles(p: SizePoint, thr: float) -> bool:
    return p.ci95[0] < thr <= p.ci95[1]


def adaptive_search(measure: Callable[[int], SizePoint], *, min_size: int, max_size: int, epsilon: float = 0.1,
                    factor: float = 2.0, resolution: float = 1.25, remeasure=None, max_samples: int = 0,
                    log=None) -> EMMEstimate:
    """Bracket EMM_ε by climbing from ``min_size`` by ``factor`` until a size's whole CI lies below
    ``1 - ε`` (so the interval closes too), then narrow the bracket in log |D|
    (interpolated, kept inside the bracket's middle half) until its sizes differ by at most a factor
    ``resolution``. A ratio whose CI straddles ``1 - ε`` is re-measured with twice the samples (up to
    ``max_samples``) through ``remeasure``, which costs sampling, not training."""
    epsilon = check_number("epsilon", epsilon, lo=0, hi=1, lo_open=True, hi_open=True)
    min_size = check_number("min_size", min_size, lo=2, integer=True)
    max_size = check_number("max_size", max_size, lo=min_size, integer=True)
    factor = check_number("factor", factor, lo=1, lo_open=True)
    resolution = check_number("resolution", resolution, lo=1, lo_open=True)
    thr, points = 1.0 - epsilon, {}

    def at(size: int) -> SizePoint:
        if size not in points:
            p = measure(size)
            while remeasure is not None and _straddles(p, thr) and 2 * p.n_generated <= max_samples:
                p = remeasure(p, 2 * p.n_generated)
            points[size] = p
            if log is not None:
                log(f"|D| = {size}: ratio {p.ratio:.3f} [{p.ci95[0]:.3f}, {p.ci95[1]:.3f}]")
        return points[size]

    size = min_size
    while at(size).ci95[1] >= thr and size < max_size:  # climb until even the CI is below 1 - ε
        size = min(max_size, max(size + 1, round(size * factor)))
    while True:
        est = estimate_emm(list(points.values()), epsilon)
        if est.status != "ok":
            return est
        a, b = est.bracket
        if b / a <= resolution or b - a <= 1:
            return est
        pa, pb = points[a], points[b]
        frac = min(max((pa.ratio - thr) / (pa.ratio - pb.ratio), 0.25), 0.75)
        at(min(max(round(math.exp(math.log(a) + frac * math.log(b / a))), a + 1), b - 1))
