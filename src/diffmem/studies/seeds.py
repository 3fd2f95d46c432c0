"""Training seeds: intervals that include the spread between trained models.

A memorization ratio measured on one trained model carries two kinds of noise: *sampling* (which
images were generated: the bootstrap CI of one run) and *training* (which model the seed gave).
Seed 001 reports single runs; at CPU scale the second dominates every ratio away from 0 and 1
(the demo's configuration at |D| = 64: 0.53 / 0.395 / 0.655 for training seeds 0 / 1 / 2, against
sampling CIs of ±0.07). For ``k`` seeds of one configuration with ratios ``r_1 … r_k``:

    r̄ = mean(r_j),   s = std(r_j, ddof=1),   interval  r̄ ± t_{0.975, k-1} · s / √k   (clipped to [0, 1])

a Student-t interval for the configuration's expected ratio over training seeds. Each ``r_j`` is
itself a sampled estimate, so the seed-to-seed variance already holds the sampling noise; the mean
width of the per-seed sampling CIs is reported beside it, so a reader sees which one dominates.

EMM over seeds. EMM_ε = max{|D| : E[ratio] ≥ 1 - ε}, and the expectation is over training too: the
estimate interpolates the seed-mean ratio at each size, and its interval comes from the seed
intervals' ends (as :func:`diffmem.studies.emm.estimate_emm` does from CIs). Each seed's own EMM is listed
as well (``emm_seed_min`` … ``emm_seed_max``: the seed spread of the base).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from diffmem.studies.emm import SizePoint, estimate_emm

SEED_KNOB = "seed"


def seed_interval(values, level: float = 0.95) -> tuple[float, float | None, float | None]:
    """``(mean, lo, hi)``: the Student-t interval of the mean over seeds, clipped to [0, 1]; no
    interval from a single seed."""
    v = np.asarray([float(x) for x in values], dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, max(mean - half, 0.0), min(mean + half, 1.0)


def _groups(rows: list[dict], knobs: list[str]) -> dict[tuple, list[dict]]:
    """Rows grouped by every knob but the seed, in first-seen order."""
    others = [k for k in knobs if k != SEED_KNOB]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in others), []).append(row)
    return groups


def aggregate_runs(rows: list[dict], knobs: list[str]) -> list[dict]:
    """Mode ``runs``: one row per configuration over its seeds: the mean highest ratio with its
    seed interval, the seeds' range and the mean sampling-CI width."""
    others = [k for k in knobs if k != SEED_KNOB]
    out = []
    for key, group in _groups(rows, knobs).items():
        done = [r for r in group if r.get("max_ratio") is not None]
        if not done:
            continue
        ratios = [r["max_ratio"] for r in done]
        mean, lo, hi = seed_interval(ratios)
        out.append({**dict(zip(others, key)), "seeds": len(done), "max_ratio": mean, "ci_lo": lo, "ci_hi": hi,
                    "seed_min": min(ratios), "seed_max": max(ratios),
                    "seed_ci_width": None if lo is None else hi - lo,
                    "sampling_ci_width": float(np.mean([r["ci_hi"] - r["ci_lo"] for r in done])),
                    "ratios": " ".join(f"{r:.3f}" for r in ratios)})
    return out


def mean_points(per_seed: list[list[SizePoint]]) -> list[SizePoint]:
    """The seed-mean ratio at every size measured by all seeds, with its seed interval as ``ci95``
    (a single seed keeps its sampling CI)."""
    by_size = [{p.size: p for p in points} for points in per_seed]
    common = sorted(set.intersection(*(set(b) for b in by_size))) if by_size else []
    points = []
    for size in common:
        seeds = [b[size] for b in by_size]
        mean, lo, hi = seed_interval([p.ratio for p in seeds])
        ci = seeds[0].ci95 if lo is None else (lo, hi)
        points.append(SizePoint(size, mean, tuple(ci), sum(p.n_generated for p in seeds),
                                sum(p.compute for p in seeds)))
    return points


def aggregate_emm(groups: dict[tuple, list[list[SizePoint]]], others: list[str], epsilon: float,
                  seed_emms: dict[tuple, list[float | None]]) -> list[dict]:
    """Mode ``emm``: one row per configuration: EMM of the seed-mean ratio curve with the interval
    from the seed intervals, and each seed's own EMM (the seed spread)."""
    out = []
    for key, per_seed in groups.items():
        points = mean_points(per_seed)
        if len(points) < 2:
            continue
        est = estimate_emm(points, epsilon)
        lo, hi = est.interval if est.interval is not None else (None, None)
        own = [e for e in seed_emms.get(key, []) if e is not None]
        out.append({**dict(zip(others, key)), "seeds": len(per_seed), "emm": est.emm,
                    "emm_lo": lo if lo and math.isfinite(lo) else None, "emm_hi": hi if hi and math.isfinite(hi) else None,
                    "emm_seed_min": min(own) if own else None, "emm_seed_max": max(own) if own else None,
                    "status": est.status, "sizes": " ".join(str(p.size) for p in points),
                    "ratios": " ".join(f"{p.ratio:.3f}" for p in points),
                    "ratio_ci": " ".join(f"{p.ci95[0]:.3f}-{p.ci95[1]:.3f}" for p in points)})
    return out
