"""Figures of the timescales study (:mod:`diffmem.studies.timescales`): f_mem and FD against
training time, one line per run and a colour per n (and collapsed by n, seed 003), and τ_gen, τ_mem
against n. The curve figure reads the flat snapshot rows of ``curves.csv`` (``n``, ``seed``,
``time``, ``f_mem``, ``ci95``, ``fd``)."""

from __future__ import annotations

import numpy as np


def point_time(point: dict, unit: str) -> float:
    """A snapshot's training time in ``unit``: images (step · batch), steps, or epochs (images / n)."""
    return {"images": point["images"], "steps": point["step"], "epochs": point["images"] / point["n"]}[unit]


def curves_figure(flat: list[dict], result: dict, *, collapse: bool):
    """f_mem (with its CI band) and FD against training time, one line per run (a colour per n),
    log time axis; ``collapse``: against time / n (seed 003: the f_mem curves fall onto one)."""
    from matplotlib.figure import Figure

    unit = result["settings"]["time"]
    fig = Figure(figsize=(8.4, 3.3))
    ax_f, ax_q = fig.subplots(1, 2)
    taus = {(r["n"], r["seed"]): r for r in result["rows"]}
    runs = sorted({(p["n"], p["seed"]) for p in flat}, key=lambda k: (k[0], k[1] or 0))
    colors = {n: f"C{i % 10}" for i, n in enumerate(sorted({n for n, _ in runs}))}
    labelled = set()
    for n, seed in runs:
        points = sorted((p for p in flat if (p["n"], p["seed"]) == (n, seed)), key=lambda p: p["time"])
        t = np.array([p["time"] for p in points]) / (n if collapse else 1)
        label = None if n in labelled else f"n = {n}"
        labelled.add(n)
        ax_f.plot(t, [p["f_mem"] for p in points], "o-", ms=3, color=colors[n], label=label)
        ax_f.fill_between(t, [p["ci95"][0] for p in points], [p["ci95"][1] for p in points], alpha=0.1,
                          color=colors[n])
        ax_q.plot(t, [p["fd"] for p in points], "o-", ms=3, color=colors[n], label=label)
        for ax, tau in ((ax_f, "tau_mem"), (ax_q, "tau_gen")):
            if taus.get((n, seed), {}).get(tau) is not None:
                ax.axvline(taus[(n, seed)][tau] / (n if collapse else 1), color=colors[n], ls=":", lw=1)
    xlabel = f"training time ({unit}){' / n' if collapse else ''}"
    ax_f.axhline(result["settings"]["threshold"], color="grey", lw=0.8, ls="--")
    ax_f.set(xscale="log", xlabel=xlabel, ylabel="memorized fraction f_mem", ylim=(-0.03, 1.03))
    ax_q.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=f"FD to held-out ({result['settings']['features']})")
    for ax in (ax_f, ax_q):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def tau_figure(result: dict):
    """τ_gen and τ_mem of every run against n (log-log), with the fit τ_mem = a·n."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 3.4))
    ax = fig.subplots()
    rows = result["rows"]
    for key, label in (("tau_mem", "τ_mem"), ("tau_gen", "τ_gen")):
        ok = [r for r in rows if r[key] is not None]
        ax.plot([r["n"] for r in ok], [r[key] for r in ok], "o", label=label)
    if "tau_mem" in result["fits"]:
        ns = np.array(sorted({r["n"] for r in rows}), dtype=float)
        a = result["fits"]["tau_mem"]["proportional"]["a"]
        ax.plot(ns, a * ns, "--", lw=1, label=f"a·n, a = {a:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="training-set size n", ylabel=f"τ ({result['settings']['time']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
