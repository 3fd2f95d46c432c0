"""The criteria an audit runs, each as one function of :class:`AuditInputs` returning a :class:`Criterion`.

=================  ==========================================================  ====================
name               rule (per generated sample x; NN_k its k-th nearest)         needs
=================  ==========================================================  ====================
``pixel``          ‖x - NN₁‖ / ‖x - NN₂‖ < 1/3 in pixel space (Yoon et al.)     always
``features``       the same 1/3 ratio in a feature space (L2 between           ``features``
                   embeddings)
``replication``    cosine similarity to the most similar training embedding    ``features``
                   > 0.5 (Somepalli et al.'s DCR "replication")
``extraction``     ℓ = d1 / (α · mean distance to the n nearest) < δ           always
                   (Carlini et al. 2023; :mod:`diffmem.metrics.extraction`)
``authenticity``   closer to NN₁ than NN₁ is to any other training image       always
                   (Alaa et al. 2022; :mod:`diffmem.metrics.copying`)
``copying``        Meehan et al.'s C_T (set-level; ≪ 0 is copying)             ``heldout``
``membership``     per-image denoising loss, training vs held-out: AUC, TPR    a model and ``heldout``
                   at 1 % FPR (:mod:`diffmem.metrics.membership`)
=================  ==========================================================  ====================

A criterion that cannot run says why in its ``explanation`` (``ran=False``). Per-sample criteria
give ``flags`` (M,) and ``rate`` (their mean); set-level ones (``copying``, ``membership``) give a
summary only. Distances are in model-space units (one grey level = 1/127.5).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.data.stream import StreamedSet, chunk_rows
from diffmem.errors import InputError
from diffmem.metrics import copying as copying_metrics
from diffmem.metrics import extraction as extraction_metrics
from diffmem.metrics import membership as membership_metrics
from diffmem.metrics.features import unit_rows
from diffmem.metrics.memorization import (DEFAULT_SIMILARITY_THRESHOLD, bootstrap_ci, embedded_memorization,
                                         memorization)

#: Somepalli et al. (DCR) call a generation a replication when its similarity exceeds 0.5.
REPLICATION_SIMILARITY = DEFAULT_SIMILARITY_THRESHOLD


@dataclass
class Criterion:
    """One criterion's outcome. Per-sample ``columns`` and ``flags`` have shape (M,)."""

    name: str
    ran: bool
    explanation: str  # one line: what was found, or why it was skipped
    rate: float | None = None  # flagged fraction (per-sample criteria)
    ci95: tuple[float, float] | None = None
    flags: np.ndarray | None = None
    columns: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)  # (caption, function making a matplotlib Figure), drawn on demand


@dataclass
class AuditInputs:
    """What the criteria see: ``train`` (N, C, H, W) possibly memory-mapped, ``generated`` (M, C, H, W)
    uint8 or float32, ``heldout`` or None, the model (``denoiser``) or None."""

    train: StreamedSet
    generated: np.ndarray
    heldout: StreamedSet | None
    denoiser: object | None
    features: object | None
    source: str | None
    threshold: float
    memory_limit: int
    device: str
    seed: int
    progress: bool
    cache: Path
    tiles: int | None = None  # extraction: Carlini et al.'s tiled ℓ2 over a tiles × tiles grid
    membership_method: str = "loss"  # loss | secmi
    _found: dict = field(default_factory=dict)

    def gen_units(self) -> np.ndarray:
        """The generated images in the training set's representation (so the training set, which
        may be larger than memory, is never converted): uint8 when it is uint8 (float samples are
        quantized, as saving them to PNG would), model-space float32 when it is float."""
        g = self.generated
        if self.train.images.dtype == np.uint8:
            return g if g.dtype == np.uint8 else to_uint8(g)
        return g.astype(np.float32) / 127.5 - 1.0 if g.dtype == np.uint8 else g.astype(np.float32)

    def scale(self) -> float:
        """Factor from the working units to model space."""
        return 1.0 / 127.5 if self.train.images.dtype == np.uint8 else 1.0


def as_image_set(s: StreamedSet) -> ImageSet:
    """A StreamedSet as an ImageSet without reading it: its values were checked chunk by chunk when
    it was opened, so the ImageSet is validated on its first image only."""
    out = ImageSet(np.asarray(s.images[:1]), source=s.source)
    out.images, out.labels = s.images, s.labels
    return out


def _stage(ctx: AuditInputs, text: str) -> None:
    if ctx.progress:
        print(f"audit:   {text}", file=sys.stderr, flush=True)


def pixel(ctx: AuditInputs) -> Criterion:
    """Yoon et al.'s 1/3 ratio in pixel space (:func:`~diffmem.metrics.memorization.memorization`:
    exact, streamed over the training set, which stays memory-mapped)."""
    res = memorization(as_image_set(ctx.train), ctx.gen_units(), threshold=ctx.threshold,
                       memory_limit=ctx.memory_limit, device=ctx.device, seed=ctx.seed, progress=ctx.progress)
    ctx._found["pixel"] = res  # reused by authenticity and the report's neighbour grid
    ratio = res.nn_ratio
    return Criterion("pixel", True, f"pixel: {int(res.memorized.sum())} of {res.n_generated} samples have d1/d2 < "
                     f"{ctx.threshold:.4g} in pixel space (Yoon et al.)", res.ratio, res.ci95, res.memorized,
                     {"nn1": res.idx1, "nn2": res.idx2, "d1": res.d1, "d2": res.d2, "nn_ratio": ratio},
                     {"threshold": ctx.threshold, "stderr": res.stderr, "median_nn_ratio": float(np.median(ratio))})


def embedded(ctx: AuditInputs) -> tuple[np.ndarray, np.ndarray, str]:
    """(train (N, k), generated (M, k)) float32 embeddings in ``ctx.features``, and its name; the
    training set is embedded chunk by chunk (into a memory-mapped file when (N, k) would take more
    than a quarter of the memory limit). ``pca:K`` is fitted on the first min(N, 10 000, one chunk)
    training images. Extractor failures and malformed outputs raise InputError naming ``features``."""
    if "train" in ctx._found:
        return ctx._found["train"], ctx._found["gen"], ctx._found["name"]
    from diffmem.metrics.features import checked_embedding, load_features

    rows = chunk_rows(ctx.train.shape, ctx.memory_limit)
    reference = np.asarray(ctx.train.images[:min(len(ctx.train), rows, 10_000)])
    extractor = load_features(ctx.features, reference=reference, source=ctx.source, device=ctx.device)
    gen = checked_embedding(extractor, ctx.generated, what="generated")
    k = gen.shape[1]
    big = len(ctx.train) * k * 4 > ctx.memory_limit // 4
    train = (np.lib.format.open_memmap(ctx.cache / "train-features.npy", mode="w+", dtype=np.float32,
                                       shape=(len(ctx.train), k)) if big else np.empty((len(ctx.train), k), np.float32))
    with tqdm(total=len(ctx.train), desc=f"embedding ({getattr(extractor, 'name', 'features')})", unit="img",
              disable=not ctx.progress, leave=False) as bar:
        for i0, block in ctx.train.chunks(rows):
            train[i0:i0 + len(block)] = checked_embedding(extractor, block, what="training", k=k)
            bar.update(len(block))
    name = str(getattr(extractor, "name", ctx.features))
    ctx._found.update(train=train, gen=gen, name=name)
    return train, gen, name


def _skip(name: str, why: str) -> Criterion:
    return Criterion(name, False, f"{name}: skipped, {why}")


def features(ctx: AuditInputs) -> Criterion:
    """The 1/3 ratio between embeddings (L2 in feature space): the measurement of
    ``diffmem memorization --features`` (:func:`~diffmem.metrics.memorization.embedded_memorization`)
    on the streamed embeddings."""
    if ctx.features is None:
        return _skip("features", "no feature space given (--features)")
    train, gen, name = embedded(ctx)
    _stage(ctx, f"nearest neighbours in {name} space")
    res = embedded_memorization(train, gen, metric="l2", threshold=ctx.threshold, features=name, background=False,
                                memory_limit=ctx.memory_limit, device=ctx.device, seed=ctx.seed, progress=ctx.progress)
    flags = res.memorized
    return Criterion("features", True, f"features: {int(flags.sum())} of {len(flags)} samples have d1/d2 < "
                     f"{ctx.threshold:.4g} between {name} embeddings", res.ratio, res.ci95, flags,
                     {"nn1": res.idx1, "nn2": res.idx2, "d1": res.d1, "d2": res.d2, "nn_ratio": res.nn_ratio},
                     {"space": name, "threshold": ctx.threshold})


def replication(ctx: AuditInputs) -> Criterion:
    """DCR's rule: cosine similarity to the most similar training embedding above 0.5 (the cosine
    measurement of :func:`~diffmem.metrics.memorization.embedded_memorization` on unit rows)."""
    if ctx.features is None:
        return _skip("replication", "no feature space given (--features)")
    train, gen, name = embedded(ctx)
    unit_train = np.empty_like(train) if not isinstance(train, np.memmap) else np.lib.format.open_memmap(
        ctx.cache / "train-unit-features.npy", mode="w+", dtype=np.float32, shape=train.shape)
    rows = chunk_rows((train.shape[1],), ctx.memory_limit)
    for i0 in range(0, len(train), rows):  # chunk by chunk: the embeddings may be memory-mapped
        unit_train[i0:i0 + rows] = unit_rows(np.asarray(train[i0:i0 + rows]))
    res = embedded_memorization(unit_train, unit_rows(gen), metric="cosine", threshold=ctx.threshold, features=name,
                                similarity_threshold=REPLICATION_SIMILARITY, background=False, bootstrap=0,
                                memory_limit=ctx.memory_limit, device=ctx.device, progress=ctx.progress)
    sim, flags = res.similarity, res.replicated
    ci, _ = bootstrap_ci(flags, 1000, ctx.seed)
    return Criterion("replication", True, f"replication: {int(flags.sum())} of {len(flags)} samples have cosine "
                     f"similarity > {REPLICATION_SIMILARITY:g} to a training image in {name} space (DCR)",
                     float(flags.mean()), ci, flags, {"nn1": res.idx1, "similarity": sim},
                     {"space": name, "similarity_threshold": REPLICATION_SIMILARITY,
                      "median_similarity": float(np.median(sim))})


def extraction(ctx: AuditInputs) -> Criterion:
    """Carlini et al.'s adaptive distance, with the most-copied table as a figure."""
    ex = extraction_metrics
    res = ex.extraction(as_image_set(ctx.train), ctx.gen_units(), tiles=ctx.tiles, memory_limit=ctx.memory_limit,
                        device=ctx.device, progress=ctx.progress)
    ci, _ = bootstrap_ci(res.extracted, 1000, ctx.seed)
    return Criterion("extraction", True, res.explain(), res.fraction, ci, res.extracted,
                     {"nn1": res.idx1, "d1": res.d1, "mean_n": res.mean_n, "score": res.score}, res.summary(),
                     [("Most copied training images (Carlini et al.'s extraction)",
                       lambda: ex.most_copied_figure(res, ctx.train.images, ctx.gen_units()))])


def authenticity(ctx: AuditInputs) -> Criterion:
    """Alaa et al.'s per-sample rule (flags the inauthentic samples): the nearest training image r
    of each sample comes from the pixel criterion's search, and r's nearest *other* training image
    from :func:`~diffmem.metrics.copying.nearest_other_distance` (O(M·N), not O(N²))."""
    copying = copying_metrics
    found = ctx._found["pixel"]
    idx = found.idx1
    own = copying.nearest_other_distance(ctx.train.images, idx, memory_limit=ctx.memory_limit, device=ctx.device)
    d_gen, d_train = found.d1, own * ctx.scale()
    res = copying.AuthenticityResult.from_distances(d_gen, d_train, idx)
    flags = ~res.authentic
    ci, _ = bootstrap_ci(flags, 1000, ctx.seed)
    return Criterion("authenticity", True, res.explain(), float(flags.mean()), ci, flags,
                     {"nn1": res.idx, "d_gen": res.d_gen, "d_train": res.d_train}, res.summary())


def copying(ctx: AuditInputs) -> Criterion:
    """Meehan et al.'s C_T (needs held-out images; k-means on the whole training set in memory)."""
    if ctx.heldout is None:
        return _skip("copying", "needs held-out images (--heldout)")
    cp = copying_metrics
    need = len(ctx.train) * int(np.prod(ctx.train.shape)) * 8
    if need > ctx.memory_limit:
        return _skip("copying", f"its k-means cells need the training set in memory as float64 "
                                f"({need / 2**20:.0f} MiB > the memory limit)")
    held = ctx.heldout.images
    held = np.asarray(held) if held.dtype == ctx.train.images.dtype else (
        to_uint8(held) if ctx.train.images.dtype == np.uint8 else np.asarray(held, np.float32) / 127.5 - 1.0)
    res = cp.data_copying(np.asarray(ctx.train.images), held, ctx.gen_units(), seed=ctx.seed,
                          memory_limit=ctx.memory_limit, device=ctx.device)
    return Criterion("copying", True, res.explain(), summary=res.summary(),
                     columns={k.removeprefix("copying_"): v for k, v in res.per_sample().items()})


def membership(ctx: AuditInputs) -> Criterion:
    """Membership inference from the per-image denoising loss or SecMI's t-error (needs a model and
    held-out images)."""
    if ctx.denoiser is None:
        return _skip("membership", "needs a model, not samples")
    if ctx.heldout is None:
        return _skip("membership", "needs held-out images (--heldout)")
    mm = membership_metrics
    members = _member_subset(ctx)
    res = mm.membership(ctx.denoiser, members, as_image_set(ctx.heldout), method=ctx.membership_method,
                        seed=ctx.seed, device=ctx.device)
    figs = [("Membership inference ROC (training vs held-out)", lambda: mm.roc_figure(res))]
    return Criterion("membership", True, res.explain(), summary=res.summary(), figures=figs)


#: Membership inference scores at most this many training images (a seeded random subset, as many as
#: there are held-out images): the attack is balanced and its cost does not grow with |train|.
MAX_MEMBERS = 2000


def _member_subset(ctx: AuditInputs) -> ImageSet:
    """min(N, H, MAX_MEMBERS) training images (with their labels), chosen by the seeded stream
    (seed, MEMBERSHIP), in index order."""
    from diffmem.rng import MEMBERSHIP, numpy_rng

    n = min(len(ctx.train), len(ctx.heldout), MAX_MEMBERS)
    pick = np.sort(numpy_rng(ctx.seed, MEMBERSHIP).choice(len(ctx.train), size=n, replace=False))
    labels = None if ctx.train.labels is None else ctx.train.labels[pick]
    return ImageSet(np.asarray(ctx.train.images[pick]), labels, source=ctx.train.source)


CRITERIA = (("pixel", pixel), ("features", features), ("replication", replication), ("extraction", extraction),
            ("authenticity", authenticity), ("copying", copying), ("membership", membership))
