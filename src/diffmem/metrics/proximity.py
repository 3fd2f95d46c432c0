"""The memorized fraction of generated points: within a tolerance of a training point, and the 1/3 ratio.

Two rules on the distances ``d1 = ‖x - NN₁(x)‖₂`` and ``d2 = ‖x - NN₂(x)‖₂`` of a generated sample
``x`` to its nearest and second-nearest training points (Euclidean, in data units; no range and
no quantization, so they work on point clouds as on images):

* **within a tolerance** (Baptista et al. 2025, seed 002's measure on the 2-D toy: a sample that
  lands on a training point is a copy): ``d1 ≤ tolerance``;
* **the 1/3 ratio** (Yoon et al. 2023; seeds 001 and 003): ``d1 < d2 / 3`` (an exact copy,
  ``d1 = 0``, always counts).

Seed 002 does not fix a number for its tolerance; :data:`DEFAULT_TOLERANCE` = 0.05 data units is
our choice (a twentieth of the toy's unit standard deviation; the 20 toy points lie ≈ 0.4 apart).
Both fractions come with a percentile bootstrap 95 % interval
(:func:`~diffmem.metrics.memorization.bootstrap_ci`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffmem.errors import InputError, check_number
from diffmem.metrics.memorization import DEFAULT_THRESHOLD, MAX_BOOTSTRAP, bootstrap_ci, is_memorized
from diffmem.metrics.neighbors import knn
from diffmem.rng import check_seed

DEFAULT_TOLERANCE = 0.05


@dataclass
class ProximityResult:
    """Per-sample neighbours (arrays of shape (M,), distances in data units) and both fractions."""

    d1: np.ndarray  # (M,) float64: distance to the nearest training point
    d2: np.ndarray  # (M,) float64: distance to the second nearest
    idx1: np.ndarray  # (M,) int64: index of the nearest training point
    within: np.ndarray  # (M,) bool: d1 <= tolerance
    memorized: np.ndarray  # (M,) bool: d1 < threshold * d2 (or d1 = 0)
    tolerance: float
    threshold: float
    n_train: int
    within_ci95: tuple[float, float] | None = None
    ratio_ci95: tuple[float, float] | None = None

    @property
    def fraction_within(self) -> float:
        """Share of samples within ``tolerance`` of a training point, in [0, 1]."""
        return float(self.within.mean())

    @property
    def ratio(self) -> float:
        """Share of samples memorized by the 1/3 ratio rule, in [0, 1]."""
        return float(self.memorized.mean())

    def summary(self) -> dict:
        """JSON-ready numbers (intervals None without a bootstrap)."""
        as_list = lambda ci: None if ci is None else [float(ci[0]), float(ci[1])]  # noqa: E731
        return {"fraction_within": self.fraction_within, "within_ci95": as_list(self.within_ci95),
                "memorization_ratio": self.ratio, "ci95": as_list(self.ratio_ci95),
                "tolerance": self.tolerance, "threshold": self.threshold, "n_generated": int(len(self.d1)),
                "n_train": self.n_train, "median_d1": float(np.median(self.d1))}


def _as_rows(x, param: str) -> np.ndarray:
    """A PointCloud / ImageSet (its model-space values), array or tensor as float64 (N, D)."""
    if hasattr(x, "to_model"):
        x = x.to_model()
    elif isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"expected a non-empty (N, ...) array of numbers, got {x.dtype} {x.shape}", param=param)
    x = x.reshape(len(x), -1).astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError("contains NaN or Inf", param=param)
    return x


def proximity(train, generated, *, tolerance: float = DEFAULT_TOLERANCE, threshold: float = DEFAULT_THRESHOLD,
              bootstrap: int = 1000, seed: int = 0, device: str | None = None) -> ProximityResult:
    """How many ``generated`` samples copy a ``train`` sample, by both rules (module docstring).

    ``train`` (n, ...) with n ≥ 2 and ``generated`` (m, ...) are PointClouds, ImageSets (compared in
    model space), arrays or tensors with the same per-sample size. ``tolerance`` > 0 in data units;
    ``threshold`` in (0, 1]; ``bootstrap`` resamples (0: no intervals). Errors name the parameter.
    """
    tolerance = check_number("tolerance", tolerance, lo=0, lo_open=True)
    threshold = check_number("threshold", threshold, lo=0, lo_open=True, hi=1)
    bootstrap = check_number("bootstrap", bootstrap, lo=0, hi=MAX_BOOTSTRAP, integer=True)
    seed = check_seed(seed)
    t, g = _as_rows(train, "train"), _as_rows(generated, "generated")
    if t.shape[1] != g.shape[1]:
        raise InputError(f"samples have {g.shape[1]} values, training samples {t.shape[1]}", param="generated")
    if len(t) < 2:
        raise InputError("needs at least 2 training samples (the ratio uses the second nearest)", param="train")
    nb = knn(g, t, k=2, device=device)
    d1, d2 = nb.dist[:, 0].astype(np.float64), nb.dist[:, 1].astype(np.float64)
    within = d1 <= tolerance
    memorized = is_memorized(d1, d2, threshold)
    cis = [bootstrap_ci(flags, bootstrap, seed)[0] if bootstrap else None for flags in (within, memorized)]
    return ProximityResult(d1, d2, nb.index[:, 0], within, memorized, tolerance, threshold, len(t), *cis)
