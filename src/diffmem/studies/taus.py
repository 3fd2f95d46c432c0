"""τ from curves: pure functions of (times, values) for a timescales study
(:mod:`diffmem.studies.timescales`): the first crossing of a level interpolated in log time, τ_mem,
τ_gen, and the fits τ_mem = a·n and τ ∝ n^β."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

from diffmem.errors import InputError


def _curve(times, values) -> tuple[np.ndarray, np.ndarray]:
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    if t.ndim != 1 or t.shape != v.shape or len(t) == 0:
        raise InputError(f"times and values must be equal-length 1-D, got {t.shape} and {v.shape}", param="times")
    if not (np.isfinite(t).all() and np.isfinite(v).all()) or (t <= 0).any() or (np.diff(t) <= 0).any():
        raise InputError("times must be positive and increasing, values finite", param="times")
    return t, v


def first_crossing(times, values, level: float, *, above: bool = True) -> float | None:
    """The first time the curve passes ``level``: the first point ``i`` with ``v_i > level`` (or
    ``v_i ≤ level`` when ``above`` is False), interpolated linearly in ``log t`` from point ``i-1``:

        log τ = log t_{i-1} + (level - v_{i-1}) / (v_i - v_{i-1}) · (log t_i - log t_{i-1}).

    ``t_0`` when the first point already passes (an upper bound), None when no point does."""
    t, v = _curve(times, values)
    passed = v > level if above else v <= level
    if not passed.any():
        return None
    i = int(np.argmax(passed))
    if i == 0:
        return float(t[0])
    frac = (level - v[i - 1]) / (v[i] - v[i - 1])
    return float(np.exp(np.log(t[i - 1]) + frac * (np.log(t[i]) - np.log(t[i - 1]))))


def tau_mem(times, f_mem, threshold: float = 0.03) -> float | None:
    """τ_mem: the first time the memorized fraction exceeds ``threshold`` (None: never)."""
    return first_crossing(times, f_mem, threshold, above=True)


def tau_gen(times, fd, tolerance: float = 0.1) -> float | None:
    """τ_gen: the first time the FD (lower is better) is within ``tolerance`` of its range above its
    plateau ``FD* = min FD``, i.e. ``FD(t) ≤ FD* + tolerance · (max FD - FD*)``."""
    _, v = _curve(times, fd)
    plateau = float(v.min())
    return first_crossing(times, fd, plateau + tolerance * (float(v.max()) - plateau), above=False)


def generalization_window(f_mem, threshold: float) -> int:
    """How many leading snapshots come before f_mem first exceeds ``threshold`` (all of them if never)."""
    above = np.asarray(f_mem, dtype=float) > threshold
    return int(np.argmax(above)) if above.any() else len(above)


def fit_proportional(n, tau, confidence: float = 0.95) -> dict:
    """Least squares through the origin, ``τ = a·n``:

        a = Σ n_i τ_i / Σ n_i²,   s² = Σ (τ_i - a n_i)² / (k - 1),   se(a) = s / √(Σ n_i²),
        interval = a ± t_{(1+confidence)/2, k-1} · se(a),   R² = 1 - Σ (τ_i - a n_i)² / Σ (τ_i - τ̄)².

    Needs k ≥ 2 points. Returns dict(a, interval, r2, k)."""
    n, tau = np.asarray(n, dtype=float), np.asarray(tau, dtype=float)
    k = len(n)
    if k < 2:
        raise InputError(f"a fit needs at least 2 sizes with a τ, got {k}", param="sizes")
    a = float((n * tau).sum() / (n * n).sum())
    resid = tau - a * n
    se = math.sqrt(float((resid**2).sum()) / (k - 1) / float((n * n).sum()))
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, k - 1)) * se
    total = float(((tau - tau.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else float("nan")
    return dict(a=a, interval=[a - half, a + half], r2=r2, k=k)


def power_law(n, tau, confidence: float = 0.95) -> dict:
    """The exponent β of ``τ ∝ n^β``: the slope of ``log τ`` on ``log n`` (scipy's linregress), its
    t-interval (k - 2 degrees of freedom; None for k = 2) and the p-value of β = 0."""
    n, tau = np.asarray(n, dtype=float), np.asarray(tau, dtype=float)
    if len(n) < 2:
        raise InputError(f"a fit needs at least 2 sizes with a τ, got {len(n)}", param="sizes")
    k = len(n)
    if np.ptp(np.log(tau)) == 0:  # a constant τ: β = 0 exactly (linregress would return NaNs)
        return dict(beta=0.0, interval=[0.0, 0.0] if k >= 3 else None, p_value=1.0 if k >= 3 else None, k=k)
    fit = scipy.stats.linregress(np.log(n), np.log(tau))
    if k < 3:
        return dict(beta=float(fit.slope), interval=None, p_value=None, k=k)
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, k - 2)) * float(fit.stderr)
    return dict(beta=float(fit.slope), interval=[fit.slope - half, fit.slope + half], p_value=float(fit.pvalue), k=k)
