"""Figures of the random-features study (:mod:`diffmem.studies.rf`), as matplotlib ``Figure``
objects (no pyplot; see :mod:`diffmem.plots`):

- :func:`loss_figure`: train and test loss (solid / dashed) and score error against τ, one colour
  per ψ_n, the population floor ``a_t²`` as a grey line;
- :func:`gap_figure`: the gap ``L_test - L_train`` against τ, and its excess over the
  generalization plateau against τ/ψ_n (the collapse the paper predicts if the onset is ∝ ψ_n);
- :func:`onset_figure`: the onset τ against ψ_n per ψ_p, with the linear fit and its R².
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from diffmem.plots import save_figure

FIGURES = ("losses.png", "gap.png", "onset.png")


def _colours(values):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    values = sorted(set(values))
    return {v: cmap(i / max(len(values) - 1, 1) * 0.9) for i, v in enumerate(values)}


def _first_seed(cells: list[dict], psi_p: float) -> list[dict]:
    seen, picked = set(), []
    for c in cells:
        if c["psi_p"] == psi_p and c["psi_n"] not in seen:
            seen.add(c["psi_n"])
            picked.append(c)
    return sorted(picked, key=lambda c: c["psi_n"])


def loss_figure(cells: list[dict], summary: dict, psi_p: float) -> Figure:
    """Train/test loss and score error against τ (log axis) for one ψ_p (the first seed)."""
    picked = _first_seed(cells, psi_p)
    colour = _colours([c["psi_n"] for c in picked])
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_err = fig.subplots(1, 2)
    for c in picked:
        tau = np.asarray(c["tau"][1:])
        ax_loss.plot(tau, c["train_loss"][1:], color=colour[c["psi_n"]], label=f"ψ_n = {c['psi_n']:g}")
        ax_loss.plot(tau, c["test_loss"][1:], color=colour[c["psi_n"]], linestyle="--")
        ax_err.plot(tau, c["score_error"][1:], color=colour[c["psi_n"]], label=f"ψ_n = {c['psi_n']:g}")
    ax_loss.axhline(summary["loss_floor"], color="grey", linewidth=0.8, label="floor a_t²")
    ax_loss.set(xscale="log", xlabel="training time τ", ylabel="loss (train solid, test dashed)",
                title=f"ψ_p = {psi_p:g}")
    ax_err.set(xscale="log", yscale="log", xlabel="training time τ", ylabel="score error E‖s_A(x)+x‖²/d")
    ax_loss.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gap_figure(cells: list[dict], summary: dict, psi_p: float) -> Figure:
    """Left: the gap against τ, each cell's onset marked. Right: the gap's excess over its value at
    τ_ref (after the generalization phase) against τ/ψ_n — the curves collapse if the onset is
    ∝ ψ_n — with the onset level (dotted)."""
    picked = _first_seed(cells, psi_p)
    colour = _colours([c["psi_n"] for c in picked])
    fig = Figure(figsize=(10, 4))
    ax_time, ax_scaled = fig.subplots(1, 2)
    for c in picked:
        tau, gap = np.asarray(c["tau"][1:]), np.asarray(c["gap"][1:])
        ax_time.plot(tau, gap, color=colour[c["psi_n"]], label=f"ψ_n = {c['psi_n']:g}")
        if c["tau_onset"] is not None:
            ax_time.plot([c["tau_onset"]], [np.interp(np.log(c["tau_onset"]), np.log(tau), gap)], "o",
                         color=colour[c["psi_n"]])
        if c["gap_ref"] is not None:
            later = tau >= c["tau_ref"]
            ax_scaled.plot(tau[later] / c["psi_n"], gap[later] - c["gap_ref"], color=colour[c["psi_n"]])
    ax_scaled.axhline(summary["onset_level"], color="grey", linestyle=":", linewidth=1, label="onset level")
    ax_time.set(xscale="log", xlabel="training time τ", ylabel="gap L_test − L_train",
                title=f"ψ_p = {psi_p:g} (dots: onsets)")
    ax_scaled.set(xscale="log", xlabel="τ / ψ_n", ylabel="gap − gap(τ_ref)",
                  title="excess gap, time rescaled by ψ_n")
    ax_time.legend(fontsize=7)
    ax_scaled.legend(fontsize=7)
    fig.tight_layout()
    return fig


def onset_figure(summary: dict) -> Figure:
    """Mean onset over seeds against ψ_n, one series per ψ_p, with the least-squares line."""
    fits = summary["fits"]
    colour = _colours([float(k) for k in fits])
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for key, fit in fits.items():
        psi, tau = np.asarray(fit["psi_n"]), np.asarray(fit["tau_onset_mean"])
        label = f"ψ_p = {key}"
        if "linear" in fit:
            line = fit["linear"]
            grid = np.linspace(0, psi.max() * 1.05, 50)
            ax.plot(grid, line["slope"] * grid + line["intercept"], color=colour[float(key)], linewidth=0.8)
            label += f": τ = {line['slope']:.3g}·ψ_n {line['intercept']:+.3g}, R² = {line['r2']:.3f}"
        ax.plot(psi, tau, "o", color=colour[float(key)], label=label)
    ax.set(xlabel="ψ_n = n/d", ylabel="gap onset τ", xlim=(0, None), ylim=(0, None),
           title="onset of the generalization gap")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figures(out: Path, cells: list[dict], summary: dict, settings) -> list[Path]:
    """losses.png and gap.png (the largest ψ_p, the paper's ψ_p ≫ ψ_n regime), onset.png."""
    psi_p = max(settings.psi_p)
    return [save_figure(loss_figure(cells, summary, psi_p), Path(out) / FIGURES[0]),
            save_figure(gap_figure(cells, summary, psi_p), Path(out) / FIGURES[1]),
            save_figure(onset_figure(summary), Path(out) / FIGURES[2])]
