"""Figures: the nearest-neighbour grid of a memorization measurement, and ratio curves.

Figures are built on :class:`matplotlib.figure.Figure` directly and saved with ``fig.savefig``
(which picks the PNG writer itself): no ``pyplot``, no global figure registry, and the global
backend is never touched, so importing this module inside a Jupyter session leaves its inline
figures alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from diffmem.atomic import atomic_path
from diffmem.data.imageset import to_uint8


def _hwc(img: np.ndarray) -> np.ndarray:
    """CHW (uint8 or model-space float) → HWC / HW uint8 for imshow."""
    img = img if img.dtype == np.uint8 else to_uint8(img)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def save_neighbor_grid(path: str | Path, generated, train, result, rows: int = 6) -> Path:
    """:func:`neighbor_grid` saved as a PNG at ``path`` (atomically); returns ``path``."""
    return save_figure(neighbor_grid(generated, train, result, rows), path, dpi=110)


def neighbor_grid(generated, train, result, rows: int = 6) -> Figure:
    """For the ``rows`` most and least memorized samples, one row each of generated | 1st nearest
    training image | 2nd nearest, titled with d1/d2 (a Figure: Jupyter shows it inline).

    ``generated`` (M, C, H, W) and ``train`` (N, C, H, W) are uint8 or model-space arrays, tensors
    or ImageSets; ``result`` the :class:`~diffmem.metrics.memorization.MemorizationResult` of these sets.
    """
    generated, train = _pixels(generated), _pixels(train)
    ratio = result.nn_ratio
    order = np.argsort(ratio, kind="stable")
    rows = min(rows, len(order))
    picks = [("most memorized", i) for i in order[:rows]] + [("least memorized", i) for i in order[::-1][:rows]]
    fig = Figure(figsize=(3 * 1.6, len(picks) * 1.7))
    axes = fig.subplots(len(picks), 3, squeeze=False)
    gray = generated.shape[1] == 1
    for r, (group, i) in enumerate(picks):
        cells = [
            (generated[i], f"gen {i}\nd1/d2={ratio[i]:.3f}" + (" *" if result.memorized[i] else "")),
            (train[result.idx1[i]], f"1st: train {result.idx1[i]}\nd1={result.d1[i]:.3g}"),
            (train[result.idx2[i]], f"2nd: train {result.idx2[i]}\nd2={result.d2[i]:.3g}"),
        ]
        for c, (img, title) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(_hwc(img), cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(title, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(group, fontsize=6)
    fig.suptitle(
        f"memorization ratio {result.ratio:.3f} (d1/d2 < {result.threshold:.4g}; * = memorized)", fontsize=8
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def _pixels(x) -> np.ndarray:
    """ImageSet, tensor or array → a numpy NCHW array."""
    images = getattr(x, "images", x)
    return images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)


def save_curve(path: str | Path, x, y, *, xlabel: str, ylabel: str, title: str = "", logx: bool = False) -> Path:
    """A single line plot (with markers), saved atomically as PNG."""
    return save_curves(path, {"": (x, y)}, xlabel=xlabel, ylabel=ylabel, title=title, logx=logx)


def save_curves(path: str | Path, series: dict, *, xlabel: str, ylabel: str, title: str = "",
                logx: bool = False) -> Path:
    """Several lines ``{label: (x, y)}`` on one axis (ratios: y in [0, 1]), saved atomically as PNG."""
    fig = Figure(figsize=(4.6, 3.2))
    ax = fig.subplots()
    xs = np.concatenate([np.asarray(x, dtype=float) for x, _ in series.values()])
    if logx and (xs <= 0).any():  # symlog keeps a zero on the axis
        ax.set_xscale("symlog", linthresh=float(xs[xs > 0].min()) if (xs > 0).any() else 1.0)
    elif logx:
        ax.set_xscale("log")
    for label, (x, y) in series.items():
        ax.plot(np.asarray(x, dtype=float), y, "o-", ms=3.5, label=label or None)
    if any(series):
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically (temporary file, then rename); the file gets the mode the
    umask gives new files. A :class:`~matplotlib.figure.Figure` needs no closing: nothing but the
    caller holds it."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")
    return Path(path)
