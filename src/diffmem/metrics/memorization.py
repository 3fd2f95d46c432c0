"""The memorization ratio (Yoon et al. 2023; Gu et al. 2025; Bonnaire et al. 2025).

A generated image ``x`` is *memorized* when its nearest training image is much closer than the
second nearest:

    ‖x - NN₁(x)‖₂ / ‖x - NN₂(x)‖₂ < threshold   (threshold = 1/3),

distances in pixel space. The memorization ratio is the fraction of generated images that are
memorized; its uncertainty is a bootstrap over the generated set (:func:`bootstrap_ci`).

Convention for exact copies: ``d1 = 0`` counts as memorized even when ``d2 = 0`` as well (the
training set holds duplicates of the copied image), where the ratio ``0/0`` is undefined. A copy of a
duplicated training image is still a copy.

Errors name the parameter at fault (``threshold``, ``bootstrap``, ``seed``, ``train``, ``generated``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.errors import InputError, check_number
from diffmem.metrics.neighbors import DEFAULT_MEMORY_LIMIT, knn
from diffmem.rng import BOOTSTRAP, SUBSET, check_seed, numpy_rng

DEFAULT_THRESHOLD = 1.0 / 3.0
#: At most this many bootstrap resamples (each is one binomial draw; 10**7 of them take ~1 s and
#: 80 MB, far past the point where the 95 % interval stops moving).
MAX_BOOTSTRAP = 10**7


@dataclass
class MemorizationResult:
    """Per-sample neighbours and the memorization ratio with its bootstrap uncertainty.

    Arrays have one entry per generated image (shape (M,)). Distances are L2 over all C·H·W values,
    in model-space units (pixels mapped to [-1, 1]: one grey level is 1/127.5). ``ci95`` and
    ``stderr`` are None when no bootstrap was run (``bootstrap = 0``).
    """

    d1: np.ndarray  # (M,) float64: distance to the nearest training image
    d2: np.ndarray  # (M,) float64: distance to the second nearest
    idx1: np.ndarray  # (M,) int64: index of the nearest training image
    idx2: np.ndarray  # (M,) int64: index of the second nearest
    memorized: np.ndarray  # (M,) bool
    threshold: float
    n_train: int
    ci95: tuple[float, float] | None = None  # percentile bootstrap 95 % interval of the ratio
    stderr: float | None = None  # bootstrap standard error of the ratio
    bootstrap: int = 0  # number of bootstrap resamples
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """The memorized fraction, in [0, 1]."""
        return float(self.memorized.mean())

    @property
    def n_generated(self) -> int:
        return int(len(self.memorized))

    @property
    def nn_ratio(self) -> np.ndarray:
        """(M,) d1 / d2 per sample (:func:`nn_ratio`)."""
        return nn_ratio(self.d1, self.d2)

    def per_sample(self) -> dict:
        """(M,) arrays for a per-sample CSV/npz: d1, d2, idx1, idx2, memorized, nn_ratio."""
        return {"d1": self.d1, "d2": self.d2, "idx1": self.idx1, "idx2": self.idx2,
                "memorized": self.memorized, "nn_ratio": self.nn_ratio}

    def explain(self) -> str:
        """A line beyond the ratio itself ("" in pixel space; feature spaces add their rules)."""
        return ""

    def summary(self) -> dict:
        """A JSON-ready dict (no NaN anywhere: ``ci95`` and ``stderr`` are None without a bootstrap)."""
        return {
            "memorization_ratio": self.ratio,
            "n_memorized": int(self.memorized.sum()),
            "n_generated": self.n_generated,
            "n_train": self.n_train,
            "threshold": self.threshold,
            "ci95": None if self.ci95 is None else [float(self.ci95[0]), float(self.ci95[1])],
            "stderr": None if self.stderr is None else float(self.stderr),
            "bootstrap": self.bootstrap,
            "median_nn_ratio": float(np.median(self.nn_ratio)),
            **self.extra,
        }


def nn_ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """(M,) ``d1 / d2``, the nearest-neighbour ratio; 0 for an exact copy (``d1 = 0``), also when
    ``d2 = 0`` (the module docstring's convention). The one place that ratio is computed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(d1) / np.asarray(d2)
    return np.where(np.asarray(d1) == 0, 0.0, r)


def is_memorized(d1: np.ndarray, d2: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The memorization rule on (M,) distances: ``d1 < threshold · d2``, and every exact copy
    (``d1 = 0``). Returns (M,) bool."""
    d1, d2 = np.asarray(d1, dtype=np.float64), np.asarray(d2, dtype=np.float64)
    return (d1 < threshold * d2) | (d1 == 0)


def bootstrap_ci(memorized: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[tuple[float, float], float]:
    """Percentile bootstrap 95 % interval and standard error of the memorized fraction.

    ``memorized`` is (n,) bool, n ≥ 1; ``resamples`` ≥ 1. Returns ``((lo, hi), stderr)`` as fractions
    in [0, 1]. Resampling n Bernoulli flags with replacement and counting the ones is exactly a draw
    from Binomial(n, p̂), so each resample costs O(1) instead of O(n). Seeded by the stream
    ``(seed, BOOTSTRAP)`` of :mod:`diffmem.rng`.
    """
    resamples = check_number("bootstrap", resamples, lo=1, hi=MAX_BOOTSTRAP, integer=True)
    seed = check_seed(seed)
    n = len(memorized)
    if n == 0:
        raise InputError("no generated images to resample", param="generated")
    p_hat = float(np.mean(memorized))
    means = numpy_rng(seed, BOOTSTRAP).binomial(n, p_hat, size=resamples) / n
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi)), float(means.std(ddof=1)) if resamples > 1 else 0.0


def _as_pixels(x, param: str) -> tuple[np.ndarray, str]:
    """Accept an ImageSet, numpy array or tensor of shape (N, ...); return the pixels and the prefix
    naming their source in messages (``"path: "``, or nothing for an array)."""
    if isinstance(x, (str, os.PathLike)):  # a path any reader accepts
        from diffmem.data.io import load_image_set

        x = load_image_set(x, what=param)
    if isinstance(x, ImageSet):
        return x.images, f"{x.source}: "
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if x is None or not hasattr(x, "__len__") or isinstance(x, (dict, bytes)):
        raise InputError(f"expected images (an ImageSet, an (N, C, H, W) array or tensor, or a path), got "
                         f"{type(x).__name__}", param=param)
    x = np.asarray(x)
    if x.ndim < 2:
        raise InputError(f"expected images of shape (N, C, H, W), got an array of shape {x.shape}", param=param)
    try:
        ImageSet(x if x.ndim == 4 else x.reshape(len(x), 1, 1, -1), source="")  # validate values
    except InputError as err:
        raise InputError(err.detail.lstrip(": "), param=param) from None
    return x, ""


def check_search(memory_limit, device) -> tuple[int, str | None]:
    """The search's ``memory_limit`` (bytes, at least 1 MiB) and ``device`` (None, ``cpu``,
    ``cuda[:N]``); errors name the parameter."""
    memory_limit = check_number("memory_limit", memory_limit, lo=1 << 20, integer=True)
    if device is not None and not (isinstance(device, torch.device) or isinstance(device, str)
                                   and (device == "cpu" or device.split(":")[0] == "cuda")):
        raise InputError(f"expected None, cpu or cuda[:N], got {device!r}", param="device")
    return memory_limit, device


def image_pair(train, generated, *, min_train: int, needs: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    """``(train pixels, generated pixels, train prefix, generated prefix)`` of two image sets of one
    shape (see :func:`_as_pixels`), with at least ``min_train`` training images and one generated
    image; else an InputError naming ``train`` or ``generated`` and what ``needs`` them."""
    t_pix, t_src = _as_pixels(train, "train")
    g_pix, g_src = _as_pixels(generated, "generated")
    if t_pix.shape[1:] != g_pix.shape[1:]:
        raise InputError(f"{g_src}generated images have shape {tuple(g_pix.shape[1:])} but training images "
                         f"({t_src.rstrip(': ') or 'given'}) have {tuple(t_pix.shape[1:])}", param="generated")
    if len(t_pix) < min_train:
        raise InputError(f"{t_src}{needs} needs at least {min_train} training image{'s' * (min_train > 1)}",
                         param="train")
    if len(g_pix) < 1:
        raise InputError(f"{g_src}{needs} needs at least one generated image", param="generated")
    return t_pix, g_pix, t_src, g_src


def _common_units(t_pix: np.ndarray, g_pix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Both sets in the units of the data given, without rounding anything, and the factor to model
    space: two uint8 sets in integer pixel units; a uint8 set against a float one in pixel units too
    (the float set mapped by (x + 1)·127.5 in float64); two float sets in model space."""
    if (t_pix.dtype == np.uint8) != (g_pix.dtype == np.uint8):
        if t_pix.dtype == np.uint8:
            g_pix = (g_pix.astype(np.float64) + 1.0) * 127.5
        else:
            t_pix = (t_pix.astype(np.float64) + 1.0) * 127.5
    scale = 1.0 / 127.5 if (t_pix.dtype == np.uint8 or g_pix.dtype == np.uint8) else 1.0
    return t_pix, g_pix, scale


def memorization(
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
) -> MemorizationResult:
    """Measure how many ``generated`` images copy an image of ``train``.

    Both sets are ImageSets, arrays or tensors of shape (N, C, H, W) (or any (N, ...) of equal
    per-image size) — uint8 pixels or floats in model space [-1, 1]; a uint8 set is compared with a
    float one in pixel units, without rounding. ``quantize=True`` rounds float generated images to
    uint8 first, as saving them to PNG would (seed 001 measures PNGs). ``threshold`` in (0, 1];
    ``bootstrap`` resamples (0: no interval); ``memory_limit`` in bytes for the exact search
    (:mod:`diffmem.metrics.neighbors`). Distances are reported in model-space units.
    """
    threshold = check_number("threshold", threshold, lo=0.0, lo_open=True, hi=1.0)
    bootstrap = check_number("bootstrap", bootstrap, lo=0, hi=MAX_BOOTSTRAP, integer=True)
    seed = check_seed(seed)
    memory_limit, device = check_search(memory_limit, device)
    if not isinstance(quantize, bool):
        raise InputError(f"expected True or False, got {quantize!r}", param="quantize")
    t_pix, g_pix, _, _ = image_pair(train, generated, min_train=2, needs="the memorization ratio")
    if quantize and g_pix.dtype != np.uint8:
        g_pix = to_uint8(g_pix)
    t_pix, g_pix, scale = _common_units(t_pix, g_pix)
    nb = knn(g_pix, t_pix, k=2, memory_limit=memory_limit, device=device, progress=progress)
    memorized = is_memorized(nb.dist[:, 0], nb.dist[:, 1], threshold)
    ci95, stderr = bootstrap_ci(memorized, bootstrap, seed) if bootstrap else (None, None)
    return MemorizationResult(
        d1=nb.dist[:, 0] * scale, d2=nb.dist[:, 1] * scale, idx1=nb.index[:, 0], idx2=nb.index[:, 1],
        memorized=memorized, threshold=threshold, n_train=len(t_pix), ci95=ci95, stderr=stderr,
        bootstrap=bootstrap, extra={"n_exact_rechecks": nb.n_fallback},
    )


# Feature space ------------------------------------------------------------------------------------

#: Somepalli et al. 2023 ("Diffusion Art or Digital Forgery?", DCR): SSCD cosine similarity above 0.5
#: to the nearest training image is a "replication" (Wen et al. 2024 use 0.7 for "memorized").
DEFAULT_SIMILARITY_THRESHOLD = 0.5
#: Quantiles of the train-to-train nearest similarity (or distance) reported as background.
BACKGROUND_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
#: The background (train-to-train nearest similarity) is estimated from at most this many training
#: images (a seeded subset), each searched against the whole training set: O(BACKGROUND_ROWS · N)
#: instead of O(N²), which at N = 50 000 would cost more than the audit itself.
BACKGROUND_ROWS = 2000
METRICS = ("cosine", "l2")


@dataclass
class FeatureMemorizationResult(MemorizationResult):
    """:class:`MemorizationResult` measured in a feature space: ``d1``, ``d2``, ``idx1``, ``idx2`` and
    the 1/3 rule as before, in embedding units (``metric="cosine"``: chord distances ``‖u - v‖`` of
    unit vectors, so ``cos = 1 - d²/2``). ``similarity`` (M,) is the cosine similarity to the nearest
    training image (None for ``l2``); ``replicated`` (M,) flags ``similarity > similarity_threshold``.
    ``background`` holds the quantiles of the training images' own nearest-other similarity (cosine)
    or distance (l2), the scale against which the generated values read."""

    features: str = "pixels"
    metric: str = "cosine"
    dim: int = 0
    similarity: np.ndarray | None = None  # (M,) float64
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    background: dict = field(default_factory=dict)  # {"q0.01": value, ...}

    @property
    def replicated(self) -> np.ndarray | None:
        """(M,) bool: cosine similarity to the nearest training image above the threshold."""
        return None if self.similarity is None else self.similarity > self.similarity_threshold

    def per_sample(self) -> dict:
        """(M,) arrays for a per-sample CSV/npz."""
        out = super().per_sample()
        if self.similarity is not None:
            out.update(similarity=self.similarity, replicated=self.replicated)
        return out

    def summary(self) -> dict:
        """The pixel summary's keys, plus the feature space, metric, replication fraction (cosine
        only, else None) and the background quantiles."""
        rep = self.replicated
        return {**super().summary(), "features": self.features, "metric": self.metric, "feature_dim": self.dim,
                "similarity_threshold": self.similarity_threshold if rep is not None else None,
                "replication_fraction": None if rep is None else float(rep.mean()),
                "median_nearest_similarity": None if rep is None else float(np.median(self.similarity)),
                "background_train_nn": dict(self.background)}

    def explain(self) -> str:
        """One line: both rules, and the background for scale."""
        line = (f"{self.features} features ({self.metric}): {self.ratio:.1%} memorized (d1/d2 < "
                f"{self.threshold:.4g})")
        if self.similarity is not None:
            median = self.background.get("q0.5", float("nan"))
            line += (f", {self.replicated.mean():.1%} replicated (nearest cosine similarity > "
                     f"{self.similarity_threshold:g}; higher = closer copy; training images' own nearest "
                     f"similarity: median {median:.3f})")
            if median > self.similarity_threshold:
                line += "; the threshold is below the training set's own median: not calibrated for these features"
        return line


def feature_memorization(
    train, generated, *, features="pixels", metric: str = "cosine", threshold: float = DEFAULT_THRESHOLD,
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD, source: str | None = None, batch: int = 256,
    memory_limit: int = DEFAULT_MEMORY_LIMIT, device: str | None = None, bootstrap: int = 1000, seed: int = 0,
    progress: bool = False,
) -> FeatureMemorizationResult:
    """The memorization audit in a feature space (``features``: ``pixels``, ``pca:K`` fitted on
    ``train``, ``classifier`` with ``source``, a TorchScript file, or a
    :class:`~diffmem.metrics.features.FeatureExtractor`).

    Both sets are embedded in batches of ``batch``; the exact top-2 engine
    (:func:`~diffmem.metrics.neighbors.knn`) then finds each generated image's nearest training
    images, in L2 or — on unit-normalised embeddings — cosine (``metric``). Reports the 1/3 rule in
    that space, the share above ``similarity_threshold`` (cosine), and the train-to-train nearest
    similarities for scale. ``train`` (N, C, H, W), N ≥ 2, and ``generated`` (M, C, H, W) as for
    :func:`memorization`.
    """
    from diffmem.metrics.features import checked_embedding, load_features, unit_rows

    threshold = check_number("threshold", threshold, lo=0.0, lo_open=True, hi=1.0)
    similarity_threshold = check_number("similarity_threshold", similarity_threshold, lo=-1.0, hi=1.0)
    bootstrap = check_number("bootstrap", bootstrap, lo=0, hi=MAX_BOOTSTRAP, integer=True)
    batch = check_number("batch", batch, lo=1, integer=True)
    seed = check_seed(seed)
    if metric not in METRICS:
        raise InputError(f"expected cosine or l2, got {metric!r}", param="metric")
    image_pair(train, generated, min_train=2, needs="the memorization ratio")
    extractor = load_features(features, reference=train, source=source, device=device or "cpu")
    e_t = checked_embedding(extractor, train, what="training", batch=batch, progress=progress, dtype=np.float64)
    e_g = checked_embedding(extractor, generated, what="generated", batch=batch, progress=progress, dtype=np.float64)
    if e_t.shape[1] != e_g.shape[1]:
        raise InputError(f"{extractor.name}: {e_t.shape[1]} features per training image but {e_g.shape[1]} "
                         f"per generated image", param="features")
    if metric == "cosine":
        for emb, name in ((e_t, "training"), (e_g, "generated")):
            zero = np.flatnonzero(np.linalg.norm(emb, axis=1) == 0)
            if len(zero):
                raise InputError(f"{extractor.name}: the feature vector of {name} image {int(zero[0])} is zero "
                                 f"(no cosine similarity); use --metric l2", param="features")
        e_t, e_g = unit_rows(e_t), unit_rows(e_g)
    return embedded_memorization(e_t, e_g, metric=metric, threshold=threshold, features=extractor.name,
                                 similarity_threshold=similarity_threshold, memory_limit=memory_limit, device=device,
                                 bootstrap=bootstrap, seed=seed, progress=progress)


def embedded_memorization(
    e_t, e_g, *, metric: str = "l2", threshold: float = DEFAULT_THRESHOLD, features: str = "features",
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD, memory_limit: int = DEFAULT_MEMORY_LIMIT,
    device: str | None = None, bootstrap: int = 1000, seed: int = 0, progress: bool = False, background: bool = True,
) -> FeatureMemorizationResult:
    """The feature-space measurement on embeddings already made: ``e_t`` (N, k) training and ``e_g``
    (M, k) generated (unit rows for ``metric="cosine"``; ``e_t`` may be memory-mapped). The exact
    top-2 search, the 1/3 rule, its bootstrap CI, the cosine similarity to the nearest (cosine) and,
    with ``background``, the training images' own nearest-other quantiles. Used by
    :func:`feature_memorization` and the audit's ``features`` and ``replication`` criteria."""
    nb = knn(e_g, e_t, k=2, memory_limit=memory_limit, device=device, progress=progress)
    memorized = is_memorized(nb.dist[:, 0], nb.dist[:, 1], threshold)
    ci95, stderr = bootstrap_ci(memorized, bootstrap, seed) if bootstrap else (None, None)
    to_sim = (lambda d: 1.0 - d**2 / 2.0) if metric == "cosine" else (lambda d: d)  # cos = 1 - ‖u - v‖²/2
    quantiles = {}
    if background:
        rows = np.arange(len(e_t)) if len(e_t) <= BACKGROUND_ROWS else \
            np.sort(numpy_rng(seed, SUBSET).choice(len(e_t), BACKGROUND_ROWS, replace=False))
        own = knn(e_t[rows], e_t, k=2, memory_limit=memory_limit, device=device).dist[:, 1]  # nearest *other*
        quantiles = {f"q{q:g}": float(np.quantile(to_sim(own), q)) for q in BACKGROUND_QUANTILES}
    return FeatureMemorizationResult(
        d1=nb.dist[:, 0], d2=nb.dist[:, 1], idx1=nb.index[:, 0], idx2=nb.index[:, 1], memorized=memorized,
        threshold=threshold, n_train=len(e_t), ci95=ci95, stderr=stderr, bootstrap=bootstrap,
        extra={"n_exact_rechecks": nb.n_fallback}, features=features, metric=metric, dim=e_t.shape[1],
        similarity=to_sim(nb.dist[:, 0]) if metric == "cosine" else None,
        similarity_threshold=similarity_threshold, background=quantiles,
    )
