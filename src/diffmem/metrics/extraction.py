"""Extraction of training images (Carlini et al. 2023, "Extracting Training Data from Diffusion
Models", arXiv 2301.13188, §5.1), and the "most copied" table.

Carlini et al. call a generated image ``x̂`` *extracted* from its nearest training image ``x`` when
its distance to ``x`` is small *relative to how far ``x̂`` is from the training set in general*:

    ℓ(x̂, x; S_x̂) = ℓ₂(x̂, x) / (α · E_{y ∈ S_x̂}[ℓ₂(x̂, y)]),      extracted  ⇔  ℓ < δ,

with ``S_x̂`` the ``n`` training images nearest to the *generated* image ``x̂`` (``x`` is the first of
them, so the mean includes it), ``α = 0.5`` and ``n = 50`` (their values, "not sensitive to these
choices"). The adaptive denominator keeps a flat image that sits close to many training images from
counting as a copy. δ is a parameter, stated in every summary; the default ``δ = 1`` reads the rule
literally — the nearest training image is closer than α times the mean distance to the n nearest —
and is the cut used by public re-implementations (LeakPro's ``ratio_threshold``, and the "mL2 < 1"
de-duplication of CIFAR-10 in follow-up work); we could not check the paper's own δ offline.

For large images they compare *tiles*: the images are cut into a grid of non-overlapping tiles
(4 × 4 = 16 tiles of 128 px for Imagen/Stable Diffusion at 512 px) and the distance is the
**largest** tile distance, ``ℓ₂ᵗⁱˡᵉᵈ(a, b) = max_t ‖a_t - b_t‖₂``: two images match only when every
tile matches. ``tiles=G`` uses a G × G grid with this maximum in both numerator and denominator.

Distances are L2 over all C·H·W values in model-space units (one grey level = 1/127.5); ℓ is a
ratio of distances, so any constant scale (Carlini et al. normalise by the dimension) cancels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from diffmem.errors import InputError, check_number
from diffmem.metrics.memorization import _common_units, image_pair
from diffmem.metrics.neighbors import DEFAULT_MEMORY_LIMIT, knn

#: Carlini et al. 2023 §5.1: "We run our attack with α = 0.5 and n = 50."
DEFAULT_ALPHA = 0.5
DEFAULT_NEIGHBORS = 50
#: Default δ for ℓ < δ: d1 < α · mean_n (see the module docstring; set it to follow another convention).
DEFAULT_DELTA = 1.0


@dataclass
class ExtractionResult:
    """Carlini et al.'s extraction criterion on M generated images against N training images.

    Per-sample arrays have shape (M,); distances are in model-space units (for ``tiles``, the
    largest tile distance). ``copies`` has shape (N,): how many generated images were extracted from
    each training image.
    """

    d1: np.ndarray  # (M,) float64: distance to the nearest training image
    idx1: np.ndarray  # (M,) int64: its index
    mean_n: np.ndarray  # (M,) float64: mean distance to the n nearest training images (S_x̂)
    score: np.ndarray  # (M,) float64: ℓ = d1 / (α · mean_n); 0 for an exact copy
    extracted: np.ndarray  # (M,) bool: ℓ < δ
    alpha: float
    n_neighbors: int
    delta: float
    n_train: int
    tiles: int | None = None

    @property
    def fraction(self) -> float:
        """Share of generated images extracted, in [0, 1]."""
        return float(self.extracted.mean())

    @property
    def copies(self) -> np.ndarray:
        """(N,) int64: number of extracted generated images whose nearest training image is i."""
        return np.bincount(self.idx1[self.extracted], minlength=self.n_train).astype(np.int64)

    @property
    def n_unique(self) -> int:
        """Number of distinct training images extracted at least once."""
        return int((self.copies > 0).sum())

    def most_copied(self, top: int | None = None) -> list[dict]:
        """Training images sorted by how many generated images were extracted from them (most first,
        ties by index), only those copied at least once: ``[{"train_index", "copies",
        "generated": [indices, closest first]}, ...]``, the first ``top`` of them."""
        counts = self.copies
        order = np.lexsort((np.arange(len(counts)), -counts))
        rows = []
        for i in order[: int((counts > 0).sum())][:top]:
            gen = np.flatnonzero(self.extracted & (self.idx1 == i))
            gen = gen[np.argsort(self.d1[gen], kind="stable")]
            rows.append({"train_index": int(i), "copies": int(counts[i]), "generated": gen.tolist()})
        return rows

    def per_sample(self) -> dict:
        """(M,) arrays for a per-sample CSV/npz."""
        return {"extraction_d1": self.d1, "extraction_idx1": self.idx1, "extraction_mean_n": self.mean_n,
                "extraction_score": self.score, "extracted": self.extracted}

    def summary(self) -> dict:
        """A JSON-ready dict."""
        return {
            "extraction_fraction": self.fraction, "n_extracted": int(self.extracted.sum()),
            "n_unique_extracted": self.n_unique, "n_generated": int(len(self.extracted)),
            "n_train": self.n_train, "alpha": self.alpha, "n_neighbors": self.n_neighbors,
            "delta": self.delta, "tiles": self.tiles,
            "median_extraction_score": float(np.median(self.score)),
            "most_copied": self.most_copied(10),
        }

    def explain(self) -> str:
        """One line: what was found and which way the criterion points."""
        return (f"extraction: {int(self.extracted.sum())} of {len(self.extracted)} generated images "
                f"({self.fraction:.1%}) copy {self.n_unique} distinct training images "
                f"(ℓ = d1 / ({self.alpha:g} · mean distance to the {self.n_neighbors} nearest) < "
                f"{self.delta:.4g}; lower ℓ = closer copy)")


def adaptive_score(d1, mean_n, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Carlini et al.'s ℓ = d1 / (α · mean_n) per sample ((M,) arrays in); an exact copy (d1 = 0)
    scores 0 even when mean_n = 0 (all n nearest are duplicates of it)."""
    d1, mean_n = np.asarray(d1, dtype=np.float64), np.asarray(mean_n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = d1 / (alpha * mean_n)
    return np.where(d1 == 0, 0.0, score)


def tiled_distances(query: np.ndarray, reference: np.ndarray, grid: int) -> np.ndarray:
    """(m, n) float64 tiled ℓ2: ``max_t ‖q_t - r_t‖₂`` over the grid × grid non-overlapping tiles of
    (m, C, H, W) and (n, C, H, W) images (H and W divisible by ``grid``)."""
    q = torch.as_tensor(query, dtype=torch.float64)  # no copy for a float64 tensor
    r = torch.as_tensor(reference, dtype=torch.float64)
    m, n = len(q), len(r)
    out = torch.zeros((m, n), dtype=torch.float64)
    th, tw = q.shape[2] // grid, q.shape[3] // grid
    for a in range(grid):
        for b in range(grid):
            qt = q[:, :, a * th:(a + 1) * th, b * tw:(b + 1) * tw].reshape(m, -1)
            rt = r[:, :, a * th:(a + 1) * th, b * tw:(b + 1) * tw].reshape(n, -1)
            torch.maximum(out, torch.cdist(qt, rt, compute_mode="donot_use_mm_for_euclid_dist"), out=out)
    return out.numpy()


def _tiled_knn(g: np.ndarray, t: np.ndarray, k: int, grid: int, memory_limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest under the tiled distance, by blocks of generated images: ((m, k), (m, k))."""
    if g.ndim != 4 or g.shape[2] % grid or g.shape[3] % grid:
        raise InputError(f"images of shape {tuple(g.shape[1:])} cannot be cut into {grid} x {grid} equal tiles",
                         param="tiles")
    step = max(1, memory_limit // max(1, 8 * (len(t) + g[0].size) * 4))
    dist, index = np.empty((len(g), k)), np.empty((len(g), k), dtype=np.int64)
    t64 = torch.as_tensor(t, dtype=torch.float64)  # converted once, not per block
    for s in range(0, len(g), step):
        block = tiled_distances(g[s:s + step], t64, grid)
        order = np.argsort(block, axis=1, kind="stable")[:, :k]
        index[s:s + step] = order
        dist[s:s + step] = np.take_along_axis(block, order, axis=1)
    return dist, index


def extraction(
    train,
    generated,
    *,
    alpha: float = DEFAULT_ALPHA,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    delta: float = DEFAULT_DELTA,
    tiles: int | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    device: str | None = None,
    progress: bool = False,
) -> ExtractionResult:
    """Carlini et al.'s extraction criterion for every generated image.

    ``train`` (N, C, H, W) and ``generated`` (M, C, H, W): ImageSets, arrays or tensors, uint8 or
    model-space floats (as :func:`~diffmem.metrics.memorization.memorization`). ``n_neighbors`` is
    capped at N. ``tiles=G`` uses the tiled distance on a G × G grid (exact, brute force by blocks);
    otherwise the exact top-k engine :func:`~diffmem.metrics.neighbors.knn`.
    """
    alpha = check_number("alpha", alpha, lo=0.0, lo_open=True)
    n_neighbors = check_number("n_neighbors", n_neighbors, lo=1, integer=True)
    delta = check_number("delta", delta, lo=0.0, lo_open=True)
    if tiles is not None:
        tiles = check_number("tiles", tiles, lo=1, integer=True)
    t_pix, g_pix, _, _ = image_pair(train, generated, min_train=1, needs="extraction")
    t_pix, g_pix, scale = _common_units(t_pix, g_pix)
    k = min(n_neighbors, len(t_pix))
    if tiles is None:
        nb = knn(g_pix, t_pix, k=k, memory_limit=memory_limit, device=device, progress=progress)
        dist, index = nb.dist, nb.index
    else:
        dist, index = _tiled_knn(g_pix, t_pix, k, tiles, memory_limit)
    dist = dist * scale
    score = adaptive_score(dist[:, 0], dist.mean(axis=1), alpha)
    return ExtractionResult(d1=dist[:, 0], idx1=index[:, 0], mean_n=dist.mean(axis=1), score=score,
                            extracted=score < delta, alpha=alpha, n_neighbors=k, delta=delta,
                            n_train=len(t_pix), tiles=tiles)


def most_copied_figure(result: ExtractionResult, train, generated, *, top: int = 8, per_row: int = 5) -> Figure:
    """The "most copied" table as thumbnails: one row per training image (most copied first) showing
    it and up to ``per_row`` of the generated images extracted from it (closest first), titled with
    the number of copies and ℓ. ``train`` (N, C, H, W) and ``generated`` (M, C, H, W) as in
    :func:`extraction`. A figure with a single message when nothing was extracted."""
    from diffmem.plots import _hwc, _pixels

    train, generated = _pixels(train), _pixels(generated)
    rows = result.most_copied(top)
    fig = Figure(figsize=(1.5 * (per_row + 1), 1.7 * max(1, len(rows))))
    if not rows:
        fig.text(0.5, 0.5, "no generated image is extracted (ℓ < {:.3g})".format(result.delta), ha="center")
        return fig
    axes = fig.subplots(len(rows), per_row + 1, squeeze=False)
    gray = train.shape[1] == 1
    for r, row in enumerate(rows):
        cells = [(train[row["train_index"]], f"train {row['train_index']}\n{row['copies']} copies")]
        cells += [(generated[g], f"gen {g}\nℓ={result.score[g]:.3f}") for g in row["generated"][:per_row]]
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(cells):
                ax.imshow(_hwc(cells[c][0]), cmap="gray" if gray else None, vmin=0, vmax=255,
                          interpolation="nearest")
                ax.set_title(cells[c][1], fontsize=6)
    fig.suptitle(f"most copied training images ({result.n_unique} of {result.n_train} extracted by "
                 f"{int(result.extracted.sum())} samples; ℓ < {result.delta:.3g})", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return fig
