"""The memorization ratio (Yoon et al. 2023; Gu et al. 2025; Bonnaire et al. 2025).

A generated image ``x`` is *memorized* when its nearest training image is much closer than the
second nearest:

    ‖x - NN₁(x)‖₂ / ‖x - NN₂(x)‖₂ < threshold   (threshold = 1/3),

distances in pixel space. The memorization ratio is the fraction of generated images that are
memorized; its uncertainty is a bootstrap over the generated set.

Convention for exact copies: ``d1 = 0`` counts as memorized even when ``d2 = 0`` as well (the
training set holds duplicates of the copied image), where the ratio ``0/0`` is undefined. A copy of a
duplicated training image is still a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.errors import InputError
from diffmem.metrics.neighbors import DEFAULT_MEMORY_LIMIT, knn

DEFAULT_THRESHOLD = 1.0 / 3.0


@dataclass
class AuditResult:
    """Per-sample neighbours and the memorization ratio with its bootstrap uncertainty."""

    d1: np.ndarray  # distance to the nearest training image (model space units, [-1, 1] pixels)
    d2: np.ndarray  # distance to the second nearest
    idx1: np.ndarray
    idx2: np.ndarray
    memorized: np.ndarray  # bool per generated image
    threshold: float
    n_train: int
    ci95: tuple[float, float] = (0.0, 0.0)
    stderr: float = 0.0
    bootstrap: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return float(self.memorized.mean())

    @property
    def n_generated(self) -> int:
        return int(len(self.memorized))

    @property
    def nn_ratio(self) -> np.ndarray:
        """d1 / d2 per sample (0 for an exact copy, also when d2 = 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.d1 / self.d2
        return np.where(self.d1 == 0, 0.0, r)

    def summary(self) -> dict:
        return {
            "memorization_ratio": self.ratio,
            "n_memorized": int(self.memorized.sum()),
            "n_generated": self.n_generated,
            "n_train": self.n_train,
            "threshold": self.threshold,
            "ci95": [self.ci95[0], self.ci95[1]],
            "stderr": self.stderr,
            "bootstrap": self.bootstrap,
            "median_nn_ratio": float(np.median(self.nn_ratio)),
            **self.extra,
        }


def is_memorized(d1: np.ndarray, d2: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The memorization rule: ``d1 < threshold · d2``, and every exact copy (``d1 = 0``)."""
    d1, d2 = np.asarray(d1, dtype=np.float64), np.asarray(d2, dtype=np.float64)
    return (d1 < threshold * d2) | (d1 == 0)


def bootstrap_ci(memorized: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[tuple[float, float], float]:
    """Percentile bootstrap 95 % interval and standard error of the memorized fraction.

    Resampling n Bernoulli flags with replacement and counting the ones is exactly a draw from
    Binomial(n, p̂), so each resample costs O(1) instead of O(n).
    """
    n = len(memorized)
    if resamples <= 0 or n == 0:
        return (float("nan"), float("nan")), float("nan")
    p_hat = float(np.mean(memorized))
    means = np.random.default_rng(seed).binomial(n, p_hat, size=resamples) / n
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi)), float(means.std(ddof=1)) if resamples > 1 else 0.0


def _as_pixels(x, what: str) -> tuple[np.ndarray | torch.Tensor, str]:
    """Accept an ImageSet, numpy array or tensor; return (N, ...) pixels and a source name."""
    if isinstance(x, ImageSet):
        return x.images, x.source
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    ImageSet(x if x.ndim == 4 else x.reshape(len(x), 1, 1, -1), source=what)  # validate values
    return x, what


def audit(
    train,
    generated,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    device: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    quantize: bool = False,
    progress: bool = False,
) -> AuditResult:
    """Measure how many ``generated`` images copy an image of ``train``.

    Both sets are ImageSets, arrays or tensors of shape (N, ...) — uint8 pixels or floats in model
    space [-1, 1]; a uint8 set is compared with a float one in model space. ``quantize=True`` rounds
    float generated images to uint8 first, as saving them to PNG would (seed 001 measures PNGs).
    Distances are reported in model-space units. Exact: see :mod:`diffmem.metrics.neighbors`.
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold: must be in (0, 1], got {threshold}")
    t_pix, t_src = _as_pixels(train, "--train")
    g_pix, g_src = _as_pixels(generated, "--generated")
    if t_pix.shape[1:] != g_pix.shape[1:]:
        raise InputError(
            f"{g_src}: generated images have shape {tuple(g_pix.shape[1:])} but training images "
            f"({t_src}) have {tuple(t_pix.shape[1:])}"
        )
    if len(t_pix) < 2:
        raise InputError(f"{t_src}: the memorization ratio needs at least 2 training images")
    if quantize and g_pix.dtype != np.uint8:
        g_pix = to_uint8(g_pix)
    # Measure in the units of the data given, without rounding anything: two uint8 sets in integer
    # pixel units; a uint8 set against a float one in pixel units too (the float set mapped by
    # (x + 1)·127.5 in float64); two float sets in model space. Distances are reported in model space.
    scale = 1.0
    if (t_pix.dtype == np.uint8) != (g_pix.dtype == np.uint8):
        if t_pix.dtype == np.uint8:
            g_pix = (g_pix.astype(np.float64) + 1.0) * 127.5
        else:
            t_pix = (t_pix.astype(np.float64) + 1.0) * 127.5
    if t_pix.dtype == np.uint8 or g_pix.dtype == np.uint8:
        scale = 1.0 / 127.5
    nb = knn(g_pix, t_pix, k=2, memory_limit=memory_limit, device=device, progress=progress)
    d1, d2 = nb.dist[:, 0] * scale, nb.dist[:, 1] * scale
    memorized = is_memorized(nb.dist[:, 0], nb.dist[:, 1], threshold)
    ci95, stderr = bootstrap_ci(memorized, bootstrap, seed)
    return AuditResult(
        d1=d1, d2=d2, idx1=nb.index[:, 0], idx2=nb.index[:, 1], memorized=memorized,
        threshold=threshold, n_train=len(t_pix), ci95=ci95, stderr=stderr, bootstrap=bootstrap,
        extra={"n_exact_rechecks": nb.n_fallback},
    )
