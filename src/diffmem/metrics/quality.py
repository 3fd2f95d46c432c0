"""Offline sample quality: the Fréchet distance in a feature space, and the held-out loss gap.

Fréchet distance (Heusel et al. 2017, the "FID" formula) between Gaussians fitted to two feature
sets::

    FD = ‖μ₁ - μ₂‖² + tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^½)

with μ the feature mean and Σ the (N - 1)-normalized covariance. In Inception's pool3 space this is
FID; diffmem's default space is a small classifier trained offline (:mod:`diffmem.metrics.features`),
so its numbers compare runs with each other, not with published FIDs (give ``features=`` an exported
Inception for those).

Loss gap: the unweighted denoising loss ``E‖D(y + σn; σ) - y‖²`` (per pixel, model space) averaged
over held-out images minus the same over training images, per σ; a model that memorizes denoises its
training images better than unseen ones (the test-loss curve of seed 003).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from diffmem.errors import InputError

__all__ = ["gaussian_frechet", "frechet_distance", "feature_stats", "sample_quality", "loss_gap",
           "infer_source", "DEFAULT_SIGMAS"]

#: The default σ grid of :func:`loss_gap` (model-space units; data std ≈ 0.5).
DEFAULT_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def gaussian_frechet(mu1, cov1, mu2, cov2, *, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein²) distance of N(μ₁, Σ₁) and N(μ₂, Σ₂):
    ``‖μ₁ - μ₂‖² + tr(Σ₁) + tr(Σ₂) - 2 tr((Σ₁ Σ₂)^½)``.

    ``mu``: (k,), ``cov``: (k, k), in feature units; the result is in feature units squared.
    ``(Σ₁ Σ₂)^½`` is scipy's ``sqrtm``; when the product is singular (the root is not finite or
    does not square back to the product) both covariances get ``eps·I`` added first, and an imaginary part left by round-off is dropped (it
    must be small next to the real part, else a ValueError).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; cov {cov1.shape}, {cov2.shape}")
    diff = mu1 - mu2
    root = _sqrtm(cov1 @ cov2)
    if root is None:  # singular product (e.g. pixels that never change): regularize, as pytorch-fid does
        offset = eps * np.eye(len(mu1))
        root = _sqrtm((cov1 + offset) @ (cov2 + offset))
        if root is None:
            raise ValueError("sqrtm(Σ₁Σ₂) failed even with eps·I added to both covariances")
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3 * max(1.0, np.abs(root).max())):
            raise ValueError(f"sqrtm(Σ₁Σ₂) has a large imaginary part {np.abs(root.imag).max():.3g}")
        root = root.real
    fd = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(root)
    return float(max(fd, 0.0))  # ≥ 0 in exact arithmetic; round-off can leave -1e-12


def _sqrtm(product: np.ndarray, rtol: float = 1e-6):
    """scipy's principal square root of ``product``, or None when it is not finite or not accurate
    (``‖R·R - P‖ > rtol·‖P‖``: what scipy only warns about for singular matrices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(product)
    if not np.isfinite(root).all():
        return None
    if np.linalg.norm(root @ root - product) > rtol * max(np.linalg.norm(product), 1e-300):
        return None
    return root


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(μ (k,), Σ (k, k)) of an (N, k) feature array, float64; Σ is the unbiased (N - 1) covariance."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise InputError(f"need an (N, k) feature array with N >= 2, got shape {f.shape}", param="features")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between the Gaussians fitted to two (N, k) feature arrays."""
    mu_a, cov_a = feature_stats(feats_a)
    mu_b, cov_b = feature_stats(feats_b)
    if mu_a.shape != mu_b.shape:
        raise InputError(f"feature sizes differ: {mu_a.shape[0]} and {mu_b.shape[0]}", param="features")
    return gaussian_frechet(mu_a, cov_a, mu_b, cov_b)


def infer_source(images) -> str | None:
    """The built-in source an ImageSet came from (``digits[size=64,...]`` -> ``digits``), else None."""
    from diffmem.metrics.features import CLASSIFIER_SOURCES

    name = getattr(images, "source", None) or ""
    base = name.split("[", 1)[0]
    return base if base in CLASSIFIER_SOURCES else None


def sample_quality(generated, heldout, features="classifier", *, source: str | None = None, device="cpu",
                   progress: bool = False) -> dict:
    """Fréchet distance between ``generated`` and ``heldout`` images in a feature space.

    ``generated`` / ``heldout``: ImageSets, uint8 NCHW or model-space float NCHW of the same shape.
    ``features``: ``classifier`` (needs ``source``, else inferred from ``heldout.source``),
    ``pixels``, ``pca:K`` (fitted on ``heldout``), a TorchScript file, or a FeatureExtractor.
    Returns ``{"fd", "features", "dim", "n_generated", "n_heldout"}`` (fd in feature units²) and, for
    the classifier, its ``classifier`` record (test accuracy, cache file).
    """
    from diffmem.metrics.features import ClassifierFeatures, classifier_path, load_features

    gen, held = _as_array(generated, "generated"), _as_array(heldout, "heldout")
    if gen.shape[1:] != held.shape[1:]:
        raise InputError(f"images of shape {gen.shape[1:]}, but the held-out images are {held.shape[1:]}",
                         param="generated")
    for name, x in (("generated", gen), ("heldout", held)):
        if len(x) < 2:
            raise InputError(f"needs at least 2 images to fit a covariance, got {len(x)}", param=name)
    if features == "classifier" and source is None:
        source = infer_source(heldout) or infer_source(generated)
    extractor = load_features(features, reference=held, source=source, device=device)
    fg = extractor.embed(gen, progress=progress)
    fh = extractor.embed(held, progress=progress)
    out = {"fd": frechet_distance(fg, fh), "features": extractor.name, "dim": int(fg.shape[1]),
           "n_generated": len(gen), "n_heldout": len(held)}
    if isinstance(extractor, ClassifierFeatures):
        record = extractor.prepare(held.shape[1:])
        out["classifier"] = {"file": str(classifier_path(extractor.source, held.shape[1:])),
                             "test_accuracy": record["test_accuracy"]}
    return out


def _as_array(images, param: str) -> np.ndarray:
    from diffmem.data.imageset import ImageSet

    if isinstance(images, ImageSet):
        return images.to_model()
    try:
        return ImageSet(np.asarray(images), source=param).to_model()
    except InputError as err:
        raise InputError(err.detail, param=param) from None


def loss_gap(D, train, heldout, *, sigmas=None, seed: int = 0, batch: int = 256, device="cpu") -> dict:
    """Held-out minus training denoising loss of ``D`` per σ and on average over the σ grid.

    ``L(σ) = mean over images and pixels of (D(y + σn; σ) - y)²`` (model space, unweighted; from
    :func:`diffmem.losses.per_image_loss`, noise seeded per image and σ). ``train`` / ``heldout``:
    ImageSets (their labels condition a class-conditional D) or arrays. ``sigmas``: the grid
    (default :data:`DEFAULT_SIGMAS`). Returns ``train_loss``, ``heldout_loss``, ``gap`` (floats: means
    over the grid), their ``*_per_sigma`` lists, ``sigmas``, ``n_train``, ``n_heldout``.
    """
    from diffmem.denoisers.probe import check_shape
    from diffmem.losses import per_image_loss

    check_shape(D, train, "train", "training images")
    check_shape(D, heldout, "heldout", "held-out images")
    sigmas = list(DEFAULT_SIGMAS if sigmas is None else np.atleast_1d(np.asarray(sigmas, np.float64)))
    lt = per_image_loss(D, train, sigmas, seed=seed, batch=batch, device=device).mean(axis=0)  # (S,)
    lh = per_image_loss(D, heldout, sigmas, seed=seed, batch=batch, device=device).mean(axis=0)
    return {"sigmas": [float(s) for s in sigmas],
            "train_loss": float(lt.mean()), "heldout_loss": float(lh.mean()), "gap": float((lh - lt).mean()),
            "train_loss_per_sigma": lt.tolist(), "heldout_loss_per_sigma": lh.tolist(),
            "gap_per_sigma": (lh - lt).tolist(), "n_train": len(train), "n_heldout": len(heldout)}
