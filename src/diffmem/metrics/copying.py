"""Data copying (Meehan, Chaudhuri & Dasgupta 2020) and authenticity (Alaa et al. 2022).

**C_T** ("A Non-Parametric Test to Detect Data-Copying in Generative Models", AISTATS 2020,
arXiv 2004.05675). With training set T, held-out set P_n (n images the model never saw) and
generated set Q_m, let ``L(x) = min_{t ∈ T} ‖x - t‖₂``. Partition the space into cells π by k-means on
T (each point belongs to the cell of its nearest centroid). In each cell compare the distances of
held-out and generated points to the training points *of that cell* with the Mann-Whitney U statistic,

    U(π) = Σ_{q ∈ Q_π} Σ_{p ∈ P_π} 1[L_π(q) > L_π(p)]   (+ ½ per tie),
    Z_U(π) = (U - m_π n_π / 2) / √(m_π n_π (m_π + n_π + 1) / 12),

and average over the cells holding more than a share τ of the generated points, weighted by the
held-out share ``P_n(π)``:

    C_T = Σ_{π ∈ Π_τ} P_n(π) Z_U(π) / Σ_{π ∈ Π_τ} P_n(π).

Under the null (the model generalizes like fresh data) C_T ≈ N(0, 1); **C_T ≪ 0 means generated
samples sit closer to the training set than held-out data do: data copying**; C_T ≫ 0 means they
sit farther (underfitting). Defaults follow the authors' experiments: τ = 20/m (a cell needs more
than 20 generated points), k-means cells. The authors' code subtracts a 0.5 continuity correction from
the mean of U; we use the formula above (a shift of 0.5/σ_U per cell).

**Authenticity** ("How Faithful is your Synthetic Data? Sample-level Metrics for Evaluating and
Auditing Generative Models", Alaa, van Breugel, Saveliev & van der Schaar, ICML 2022, §3): a generated
sample g is *inauthentic* when it is closer to its nearest training image r than r is to any other
training image, ``‖g - r‖ ≤ min_{t ≠ r} ‖r - t‖``; the authenticity score is the authentic share (the
paper's per-sample rule, as DESIGN.md §6 states it). The tie counts as a copy (≤, as dgm-eval and the
authors' corrected code): a copy of a duplicated training image (``‖g - r‖ = 0 = ‖r - t‖``) is
inauthentic. **Lower authenticity means more samples copy
their nearest training image.** The authors' released code (vanderschaarlab/evaluating-generative-
models, copied by synthcity) computes instead, for every *real* point r, ``real_to_real[j] <
real_to_synth[r]`` with ``j`` the index of r's nearest *synthetic* point used as a real index — a
per-real-point average that mixes index spaces; we do not reproduce it.

Distances are exact L2 (:func:`~diffmem.metrics.neighbors.knn`) over all values, in model-space units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffmem.errors import InputError, check_number
from diffmem.metrics.memorization import _as_pixels, _common_units, image_pair
from diffmem.metrics.neighbors import DEFAULT_MEMORY_LIMIT, knn
from diffmem.rng import check_seed

#: The authors' experiments keep cells with more than 20 generated samples: τ = 20 / m.
MIN_GENERATED_PER_CELL = 20
#: At most this many cells by default (the authors use 50 on MNIST).
MAX_DEFAULT_CELLS = 50


@dataclass
class DataCopyingResult:
    """Meehan et al.'s C_T. Per-cell arrays have shape (K,), per-sample arrays (M,) for generated and
    (n,) for held-out images; distances in model-space units."""

    c_t: float  # the statistic (NaN when no cell qualifies)
    z_u: np.ndarray  # (K,) Z_U per cell (NaN where it was not computed)
    used: np.ndarray  # (K,) bool: the cell is in Π_τ
    counts: np.ndarray  # (K, 3) int: training, held-out, generated points per cell
    tau: float
    gen_cell: np.ndarray  # (M,) int64 cell of each generated image
    gen_dist: np.ndarray  # (M,) float64 distance to the nearest training image of its cell
    heldout_cell: np.ndarray  # (n,) int64
    heldout_dist: np.ndarray  # (n,) float64

    def per_sample(self) -> dict:
        """(M,) arrays for a per-sample CSV/npz of the generated images."""
        return {"copying_cell": self.gen_cell, "copying_cell_nn_distance": self.gen_dist,
                "copying_cell_used": self.used[self.gen_cell]}

    def summary(self) -> dict:
        """A JSON-ready dict (C_T is None when no cell qualifies)."""
        return {"c_t": None if np.isnan(self.c_t) else float(self.c_t), "cells": int(len(self.z_u)),
                "cells_used": int(self.used.sum()), "tau": self.tau,
                "n_heldout": int(len(self.heldout_cell)), "n_generated": int(len(self.gen_cell)),
                "z_u": [None if np.isnan(z) else float(z) for z in self.z_u]}

    def explain(self) -> str:
        """One line stating the direction of C_T."""
        if np.isnan(self.c_t):
            return f"C_T undefined: no cell holds more than a share {self.tau:.3g} of the generated samples"
        if self.c_t < 0:
            way = "closer to the training set than held-out data are (data copying)"
        else:
            way = "no closer to the training set than held-out data are (no data copying)"
        return f"C_T = {self.c_t:.2f} {'<' if self.c_t < 0 else '>='} 0: generated samples are {way}; " \
               f"≈ N(0, 1) without copying, ≪ 0 (e.g. < -3) is copying"


def z_u(gen_dist: np.ndarray, heldout_dist: np.ndarray) -> float:
    """Z-scored Mann-Whitney U of (m,) generated against (n,) held-out distances (both non-empty):
    ``U = #{(q, p): L(q) > L(p)} + ½ #{ties}`` (scipy's U of the first sample),
    ``Z_U = (U - mn/2) / √(mn(m+n+1)/12)``."""
    from scipy.stats import mannwhitneyu

    m, n = len(gen_dist), len(heldout_dist)
    u = mannwhitneyu(gen_dist, heldout_dist, alternative="two-sided", method="asymptotic").statistic
    return float((u - m * n / 2.0) / np.sqrt(m * n * (m + n + 1) / 12.0))


def combine_cells(z: np.ndarray, heldout_share: np.ndarray, used: np.ndarray) -> float:
    """C_T = Σ_{used} P_n(π) Z_U(π) / Σ_{used} P_n(π) for (K,) arrays; NaN when no cell is used."""
    w = heldout_share[used]
    return float(np.dot(w, z[used]) / w.sum()) if w.sum() > 0 else float("nan")


def _check_sets(train, heldout, generated) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The three sets as (N, d) rows in common units, with the factor to model space."""
    t_pix, _ = _as_pixels(train, "train")
    h_pix, h_src = _as_pixels(heldout, "heldout")
    g_pix, g_src = _as_pixels(generated, "generated")
    for pix, src, param in ((h_pix, h_src, "heldout"), (g_pix, g_src, "generated")):
        if pix.shape[1:] != t_pix.shape[1:]:
            raise InputError(f"{src}{param} images have shape {tuple(pix.shape[1:])} but training images "
                             f"have {tuple(t_pix.shape[1:])}", param=param)
        if len(pix) == 0:
            raise InputError(f"{src}no {param} images", param=param)
    t = t_pix.reshape(len(t_pix), -1)
    h, g = h_pix.reshape(len(h_pix), -1), g_pix.reshape(len(g_pix), -1)
    if len(t) < 2:
        raise InputError("C_T needs at least 2 training images", param="train")
    sets = (t, h, g)
    n_uint8 = sum(a.dtype == np.uint8 for a in sets)
    if n_uint8 == 3:  # exact integer distances, in grey levels
        return t, h, g, 1.0 / 127.5
    if n_uint8:  # mixed: every set in float64 pixel units, nothing rounded
        t, h, g = (a.astype(np.float64) if a.dtype == np.uint8 else (a.astype(np.float64) + 1.0) * 127.5
                   for a in sets)
        return t, h, g, 1.0 / 127.5
    return t, h, g, 1.0


def _cell_distances(points: np.ndarray, cells: np.ndarray, train: np.ndarray, train_cells: np.ndarray,
                    k: int, memory_limit: int, device) -> np.ndarray:
    """(len(points),) distance of each point to the nearest training point of its own cell."""
    out = np.empty(len(points))
    for c in range(k):
        mine = np.flatnonzero(cells == c)
        if len(mine):
            nb = knn(points[mine], train[train_cells == c], k=1, memory_limit=memory_limit, device=device)
            out[mine] = nb.dist[:, 0]
    return out


def data_copying(train, heldout, generated, *, cells: int | None = None, tau: float | None = None,
                 seed: int = 0, memory_limit: int = DEFAULT_MEMORY_LIMIT, device=None) -> DataCopyingResult:
    """Meehan et al.'s C_T of ``generated`` against ``train``, with ``heldout`` images of the same
    distribution the model never saw (all (N, C, H, W) ImageSets, arrays or tensors; uint8 or
    model-space floats; any (N, ...) of equal per-image size).

    ``cells``: number of k-means cells fitted on the training set (scikit-learn, ``n_init=10``,
    seeded by ``seed``); default ``min(50, n // 20, m // 40)`` and at least 1, so that cells hold
    held-out points and, on average, twice the generated points a cell needs to count. ``tau``: a cell is used when it holds more than this share of the generated
    images; default ``20 / m`` (the authors').
    """
    from sklearn.cluster import KMeans

    seed = check_seed(seed)
    t, h, g, scale = _check_sets(train, heldout, generated)
    m, n = len(g), len(h)
    if cells is None:
        cells = int(max(1, min(MAX_DEFAULT_CELLS, n // MIN_GENERATED_PER_CELL, m // (2 * MIN_GENERATED_PER_CELL))))
    cells = check_number("cells", cells, lo=1, hi=len(t), integer=True)
    tau = MIN_GENERATED_PER_CELL / m if tau is None else check_number("tau", tau, lo=0.0, hi=1.0, hi_open=True)
    km = KMeans(n_clusters=cells, n_init=10, random_state=seed).fit(t.astype(np.float64))
    t_cell = km.labels_.astype(np.int64)
    h_cell = km.predict(h.astype(np.float64)).astype(np.int64)
    g_cell = km.predict(g.astype(np.float64)).astype(np.int64)
    h_dist = _cell_distances(h, h_cell, t, t_cell, cells, memory_limit, device) * scale
    g_dist = _cell_distances(g, g_cell, t, t_cell, cells, memory_limit, device) * scale
    counts = np.stack([np.bincount(c, minlength=cells) for c in (t_cell, h_cell, g_cell)], axis=1)
    used = (counts[:, 2] / m > tau) & (counts[:, 1] > 0)  # a cell without held-out points has weight 0
    z = np.full(cells, np.nan)
    for c in np.flatnonzero(used):
        z[c] = z_u(g_dist[g_cell == c], h_dist[h_cell == c])
    c_t = combine_cells(z, counts[:, 1] / n, used)
    return DataCopyingResult(c_t=c_t, z_u=z, used=used, counts=counts, tau=float(tau), gen_cell=g_cell,
                             gen_dist=g_dist, heldout_cell=h_cell, heldout_dist=h_dist)


@dataclass
class AuthenticityResult:
    """Alaa et al.'s authenticity: per generated image (shape (M,)), model-space distances."""

    d_gen: np.ndarray  # (M,) distance from the generated image to its nearest training image r
    d_train: np.ndarray  # (M,) distance from r to its nearest other training image
    idx: np.ndarray  # (M,) int64 index of r
    authentic: np.ndarray  # (M,) bool: d_gen > d_train

    @classmethod
    def from_distances(cls, d_gen: np.ndarray, d_train: np.ndarray, idx: np.ndarray) -> AuthenticityResult:
        """The rule: a sample is inauthentic when ``d_gen ≤ d_train`` (a tie is a copy)."""
        return cls(d_gen=d_gen, d_train=d_train, idx=idx, authentic=d_gen > d_train)

    @property
    def authenticity(self) -> float:
        """Authentic share, in [0, 1]."""
        return float(self.authentic.mean())

    def per_sample(self) -> dict:
        return {"authenticity_d_gen": self.d_gen, "authenticity_d_train": self.d_train,
                "authenticity_idx": self.idx, "authentic": self.authentic}

    def summary(self) -> dict:
        return {"authenticity": self.authenticity, "n_inauthentic": int((~self.authentic).sum()),
                "n_generated": int(len(self.authentic))}

    def explain(self) -> str:
        return (f"authenticity = {self.authenticity:.3f}: {int((~self.authentic).sum())} of {len(self.authentic)} "
                f"generated samples are closer to their nearest training image than that image is to any "
                f"other training image (inauthentic; lower authenticity = more copying)")


def nearest_other_distance(train, rows: np.ndarray, *, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                           device=None) -> np.ndarray:
    """(len(rows),) distance from each training image ``train[rows[i]]`` to its nearest *other*
    training image (0 for a duplicated image), in ``train``'s units. Only the distinct rows are
    searched (exact k = 2, column 2), so the cost is O(len(distinct rows) · N), not O(N²)."""
    distinct, where = np.unique(rows, return_inverse=True)
    own = knn(np.asarray(train[distinct]), train, k=2, memory_limit=memory_limit, device=device)
    return own.dist[where.reshape(-1), 1]


def authenticity(train, generated, *, memory_limit: int = DEFAULT_MEMORY_LIMIT, device=None) -> AuthenticityResult:
    """Alaa et al.'s per-sample authenticity of ``generated`` against ``train`` (ImageSets, arrays or
    tensors, (N, ...) and (M, ...) of equal per-image size; at least 2 training images).

    Each sample's nearest training image r comes from one exact search, r's nearest *other*
    training image from :func:`nearest_other_distance`."""
    t_pix, g_pix, _, _ = image_pair(train, generated, min_train=2, needs="authenticity")
    t_u, g_u, scale = _common_units(t_pix, g_pix)
    gen_nb = knn(g_u, t_u, k=1, memory_limit=memory_limit, device=device)
    idx = gen_nb.index[:, 0]
    d_train = nearest_other_distance(t_u, idx, memory_limit=memory_limit, device=device)
    d_gen, d_train = gen_nb.dist[:, 0] * scale, d_train * scale
    return AuthenticityResult.from_distances(d_gen, d_train, idx)
