"""The random-features study of seed 003 (Bonnaire et al. 2025, §4): train ``s_A`` at one diffusion
time by full-batch gradient descent, log train loss, test loss, score error and the generalization
gap ``L_test - L_train`` on a log-spaced time grid, and find when the gap opens, over ``ψ_n = n/d``
and ``ψ_p = p/d``. The paper predicts an onset ``τ_mem ∝ ψ_n/Δ_t`` (and ``τ_gen ∝ 1/Δ_t``).

Protocol (one cell = one (ψ_n, ψ_p, seed)):

- ``W`` (p, d), training points ``x_ν`` (n, d), test points and the evaluation noise are drawn once
  from ``torch.Generator().manual_seed(seed)``; ``A(0) = 0``.
- **Training noise is fresh at every step**: each full-batch step draws a new ``η`` (n, d), as the
  authors' code (``Training_random_features``) and DESIGN §1 do; the loss being minimized is thus
  ``E_η L(A)`` over the fixed training points (its gradient is estimated with one draw per point).
- **Time**: a step ``A ← A - (dt·d²/2)·∂L/∂A`` advances τ by ``dt``: ``A ↦ A (I - dt·Δ_t·U/ψ_p)``,
  ``U = (1/n) Σ φ_ν φ_νᵀ``; a mode of U with eigenvalue λ relaxes at ``Δ_t·λ/ψ_p``: the linear part
  (λ ≈ μ₁²ψ_p) at ``μ₁²Δ_t`` (τ_gen ~ 1/Δ_t). The memorization modes grow with ``v_t²``, the
  nonlinear part of the feature that survives averaging over the fresh noise (``feature_coefficients``:
  0.0039 at t = 0.3, 0.0006 at 0.6; not ``μ*² = 0.0274``): rate ∝ ``Δ_t·v_t²/ψ_n``, so
  ``τ·Δ_t·v_t²/ψ_n`` (``tau_delta_v2_over_psi_n``) is the same across t. The authors' model has no
  ``1/√p`` (their A is our A/√p); their ``steps × lr`` is ``τ·d²/(2p)``. ``normalization = "none"``
  trains their model, ``A ← A - dt·∂L/∂A`` (τ = steps × lr; Hessian ``(2Δ_t/d)·U``, rates ∝ ψ_p,
  timescales ∝ 1/ψ_p as a U-Net's width). Stable while ``lr·(2Δ_t/d)·scale²·λ_max(U) < 2``; cells at
  or above ``STABILITY_LIMIT`` are refused before anything runs.
- **Logged** at log-spaced steps: train loss on the training points and test loss on ``m·n`` fresh
  points, both with the same fixed evaluation noise (``m`` draws per training point; common random
  numbers, so the gap is exactly 0 at ``A = 0`` and smooth in τ), and the score error
  ``E‖s_A(x) + x‖²/d`` at the test inputs ``x_t ~ N(0, I)``.
- **Onset** (:func:`gap_onset`): the gap has two parts. While the fast (linear) modes are learned,
  up to ``τ_min`` (the test-loss minimum, ~ τ_gen), it rises to a plateau ∝ 1/ψ_n (the finite-n
  error of the learned covariance); then the slow modes open it further (memorization). The onset is
  the first τ at which the gap exceeds its value at ``τ_ref = baseline_factor·τ_min`` by
  ``onset_threshold · a_t²``, where ``a_t² = e^(-2t)`` is the smallest loss any score reaches on the
  population (the loss scale); crossings are interpolated in log τ. ``baseline_factor = 0`` gives
  the plain rule (gap ≥ threshold·a_t² from τ = 0), reported too as ``tau_onset_raw``.

The spec (TOML)::

    name = "random-features"
    [rf]
    d = 100
    t = 0.3
    psi_n = [2, 3, 4, 6, 8]    # n = round(ψ_n·d)
    psi_p = [16, 32]           # p = round(ψ_p·d)
    dt = 2.5                   # time step in τ (refused if the GD stability number ≥ 1.5)
    time = 2000.0              # horizon in τ
    eval_points = 30           # log-spaced evaluation steps
    eval_draws = 2             # evaluation noise draws per training point (test set m·n)
    seeds = [0]
    onset_threshold = 0.1      # the gap's excess at onset, in units of a_t²
    baseline_factor = 4.0      # the gap's excess is counted from 4·τ_min (0: from τ = 0)
    dtype = "float64"          # or float32
    normalization = "sqrt_p"   # s_A = A·tanh(Wx/√d)/√p; "none": the authors' A·tanh(Wx/√d), τ = steps × lr
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from diffmem.denoisers.random_features import (RandomFeatureScore, diffusion_coefficients, dsm_loss,
                                               dsm_loss_and_gradient, feature_coefficients, noisy_inputs,
                                               score_error)
from diffmem.errors import InputError, check_number
from diffmem.studies.specs import check_name, check_types, read_toml

STABILITY_LIMIT = 1.5  # refuse a stability number (:func:`stability`) above this (GD diverges at 2)
EVAL_CHUNK = 2048  # rows per evaluation batch (bounds memory at (chunk, p))


@dataclass(frozen=True)
class RFSettings:
    """A validated ``[rf]`` table (see the module docstring); every error names its key."""

    d: int = 100
    t: float = 0.3
    psi_n: tuple = (2.0, 3.0, 4.0, 6.0, 8.0)
    psi_p: tuple = (16.0, 32.0)
    dt: float = 2.5
    time: float = 2000.0
    eval_points: int = 30
    eval_draws: int = 2
    seeds: tuple = (0,)
    onset_threshold: float = 0.1
    baseline_factor: float = 4.0
    dtype: str = "float64"  # float64 | float32 (about twice as fast; gaps of 1e-3 stay clean)
    normalization: str = "sqrt_p"  # sqrt_p (s_A = A·φ/√p) | none (the authors' s_A = A·φ; τ = steps × lr)

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        fix("d", check_number("d", self.d, lo=2, hi=100_000, integer=True))
        fix("t", check_number("t", self.t, lo=0, lo_open=True, hi=50))
        fix("dt", check_number("dt", self.dt, lo=0, lo_open=True))
        fix("time", check_number("time", self.time, lo=self.dt))
        fix("eval_points", check_number("eval_points", self.eval_points, lo=2, hi=10_000, integer=True))
        fix("eval_draws", check_number("eval_draws", self.eval_draws, lo=1, hi=1000, integer=True))
        fix("onset_threshold", check_number("onset_threshold", self.onset_threshold, lo=0, lo_open=True))
        fix("baseline_factor", check_number("baseline_factor", self.baseline_factor, lo=0, hi=1e6))
        if self.dtype not in ("float64", "float32"):
            raise InputError(f"expected float64 or float32, got {self.dtype!r}", param="dtype")
        if self.normalization not in ("sqrt_p", "none"):
            raise InputError(f"expected sqrt_p or none, got {self.normalization!r}", param="normalization")
        fix("psi_n", self._ratios("psi_n"))
        fix("psi_p", self._ratios("psi_p"))
        seeds = self.seeds if isinstance(self.seeds, (list, tuple)) else [self.seeds]
        if not seeds:
            raise InputError("needs at least one seed", param="seeds")
        seeds = [check_number("seeds", s, lo=0, hi=2**63 - 1, integer=True) for s in seeds]
        if len(set(seeds)) != len(seeds):
            raise InputError(f"duplicate seed in {seeds}", param="seeds")
        fix("seeds", tuple(seeds))
        if self.steps > 10_000_000:
            raise InputError(f"time/dt = {self.steps} steps; at most 10,000,000", param="time")

    def _ratios(self, key: str) -> tuple:
        values = getattr(self, key)
        values = values if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise InputError("needs at least one value", param=key)
        values = [check_number(key, v, lo=0, lo_open=True, hi=10_000) for v in values]
        if len(set(values)) != len(values):
            raise InputError(f"duplicate value in {values}", param=key)
        if min(round(v * self.d) for v in values) < 1:
            raise InputError(f"{key}·d must round to at least 1 (d = {self.d})", param=key)
        return tuple(float(v) for v in values)

    @property
    def steps(self) -> int:
        return int(math.ceil(self.time / self.dt - 1e-9))

    def cells(self) -> list[dict]:
        """One dict (d, n, p, psi_n, psi_p, seed, name) per (ψ_p, ψ_n, seed), in that order."""
        return [dict(d=self.d, n=round(pn * self.d), p=round(pp * self.d), psi_n=pn, psi_p=pp, seed=s,
                     name=f"psi_p-{pp:g}_psi_n-{pn:g}_seed-{s}")
                for pp in self.psi_p for pn in self.psi_n for s in self.seeds]


def parse_rf_spec(path) -> tuple[str, RFSettings]:
    """Read a random-features spec: ``(name, settings)``; errors are one line naming the key."""
    doc = read_toml(path)
    path = str(path)
    unknown = [k for k in doc if k not in ("name", "rf")]
    if unknown:
        raise InputError(f"{path}: {unknown[0]}: unknown key (known: name, rf)")
    name = check_name(doc.get("name", Path(path).stem), path)
    table = doc.get("rf")
    if not isinstance(table, dict):
        raise InputError(f"{path}: [rf]: missing table (d, t, psi_n, psi_p, dt, time, ...)")
    known = tuple(RFSettings.__dataclass_fields__)
    bad = [k for k in table if k not in known]
    if bad:
        raise InputError(f"{path}: [rf] {bad[0]}: unknown key (known: {', '.join(known)})")
    try:
        check_types(RFSettings, table)
        settings = RFSettings(**table)
    except InputError as err:
        raise InputError(f"{path}: [rf] {err.param}: {err.detail}") from None
    return name, settings


def stability(cell: dict, settings: RFSettings) -> float:
    """``lr·(2Δ_t/d)·scale²·λ_max(U)`` for the cell's first training batch (GD diverges at 2);
    ``U = ΦᵀΦ/n`` shares its nonzero eigenvalues with the Gram ``ΦΦᵀ/n``: the smaller is diagonalized."""
    model, x, *_ = _draw(cell, settings)
    gen = torch.Generator().manual_seed(cell["seed"] + 1)
    phi = model.features(noisy_inputs(x, torch.randn(x.shape, generator=gen, dtype=x.dtype), settings.t))
    n, p = phi.shape
    gram = phi @ phi.T / n if n <= p else phi.T @ phi / n
    lam_max = float(torch.linalg.eigvalsh(gram)[-1])
    _, delta = diffusion_coefficients(settings.t)
    return learning_rate(model, settings.dt) * 2 * delta / cell["d"] * model.scale**2 * lam_max


def check_stability(settings: RFSettings) -> dict:
    """Every cell's stability number; an InputError naming the spec key ``[rf] dt`` if one is at or
    above the limit."""
    numbers = {c["name"]: stability(c, settings) for c in settings.cells()}
    worst = max(numbers, key=numbers.get)
    if numbers[worst] >= STABILITY_LIMIT:
        safe = settings.dt * STABILITY_LIMIT / numbers[worst]
        raise InputError(f"[rf] dt: gradient descent would be unstable at {worst} (stability number "
                         f"{numbers[worst]:.2f} ≥ {STABILITY_LIMIT}); use dt < {safe:.3g}")
    return numbers


def _draw(cell: dict, settings: RFSettings):
    """The cell's frozen randomness, in a fixed order: W, training points, test points, eval noise."""
    gen = torch.Generator().manual_seed(cell["seed"])
    d, n, m = cell["d"], cell["n"], settings.eval_draws
    dtype = getattr(torch, settings.dtype)
    model = RandomFeatureScore(d, cell["p"], generator=gen, dtype=dtype, normalize=settings.normalization == "sqrt_p")
    draw = lambda rows: torch.randn(rows, d, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    return model, draw(n), draw(m * n), draw(m * n), gen


def eval_steps(steps: int, points: int) -> list[int]:
    """0 and up to ``points`` log-spaced steps in [1, steps] (rounded, unique, ending at ``steps``)."""
    grid = np.unique(np.rint(np.logspace(0, math.log10(steps), points)).astype(int)) if steps > 1 else np.array([1])
    return [0, *grid.tolist()]


def _evaluate(model, x_train, x_test, noise, t) -> tuple[float, float, float]:
    """(train loss, test loss, score error), chunked; the m-fold training set reuses ``x_train``."""
    n, rows = x_train.shape[0], noise.shape[0]
    train = test = err = 0.0
    for lo in range(0, rows, EVAL_CHUNK):
        hi = min(rows, lo + EVAL_CHUNK)
        eta, xs = noise[lo:hi], x_test[lo:hi]
        xtr = x_train[torch.arange(lo, hi) % n]
        w = (hi - lo) / rows
        train += w * float(dsm_loss(model, xtr, eta, t))
        test += w * float(dsm_loss(model, xs, eta, t))
        err += w * float(score_error(model, noisy_inputs(xs, eta, t)))
    return train, test, err


def simulate(cell: dict, settings: RFSettings) -> dict:
    """Train one cell; returns the curves (lists over the evaluation grid): ``tau``, ``step``,
    ``train_loss``, ``test_loss``, ``gap``, ``score_error``, plus the cell's onset ``tau_onset``."""
    model, x_train, x_test, noise, gen = _draw(cell, settings)
    t = settings.t
    grid = eval_steps(settings.steps, settings.eval_points)
    curves = {k: [] for k in ("step", "tau", "train_loss", "test_loss", "gap", "score_error")}
    targets = set(grid)
    for step in range(settings.steps + 1):
        if step in targets:
            train, test, err = _evaluate(model, x_train, x_test, noise, t)
            if not all(map(math.isfinite, (train, test, err))):
                raise FloatingPointError(f"{cell['name']}: the loss diverged at step {step}; lower dt")
            for key, value in zip(curves, (step, step * settings.dt, train, test, test - train, err)):
                curves[key].append(value)
        if step < settings.steps:
            eta = torch.randn(x_train.shape, generator=gen, dtype=torch.float64).to(x_train.dtype)  # fresh η
            gd_step(model, x_train, eta, t, settings.dt)
    a, _ = diffusion_coefficients(t)
    curves.update(gap_onset(curves["tau"], curves["gap"], curves["test_loss"], settings.onset_threshold * a * a,
                            settings.baseline_factor))
    return {**{k: cell[k] for k in ("name", "d", "n", "p", "psi_n", "psi_p", "seed")}, **curves}


def learning_rate(model: RandomFeatureScore, dt: float) -> float:
    """GD rate on L for a τ-step ``dt``: ``dt·d²/2`` with the ``1/√p``, ``dt`` without (steps × lr)."""
    return dt * model.d * model.d / 2.0 if model.scale != 1.0 else dt


def gd_step(model: RandomFeatureScore, x: torch.Tensor, eta: torch.Tensor, t: float, dt: float) -> None:
    """One full-batch step that advances τ by ``dt``: ``A ← A - learning_rate·∂L/∂A`` (in place)."""
    _, grad = dsm_loss_and_gradient(model, x, eta, t)
    model.A -= learning_rate(model, dt) * grad


def gap_onset(tau, gap, test_loss, level: float, baseline_factor: float) -> dict:
    """The onset of the gap's excess over its value at ``τ_ref = baseline_factor·τ_min`` (module
    docstring); ``τ_min`` is the first grid time of the smallest test loss. Returns ``tau_onset``
    (None if never, or if τ_ref is past the horizon), ``tau_onset_raw`` (no baseline),
    ``tau_test_min``, ``tau_ref`` and ``gap_ref`` (the gap at τ_ref, interpolated in log τ)."""
    tau, gap = np.asarray(tau, float), np.asarray(gap, float)
    tau_min = float(tau[int(np.argmin(test_loss))])
    out = {"tau_onset_raw": onset_time(tau, gap, level), "tau_test_min": tau_min}
    tau_ref = baseline_factor * tau_min
    if baseline_factor == 0 or tau_min == 0:
        return out | {"tau_onset": out["tau_onset_raw"], "tau_ref": 0.0, "gap_ref": 0.0}
    if tau_ref > tau[-1]:
        return out | {"tau_onset": None, "tau_ref": tau_ref, "gap_ref": None}
    gap_ref = float(np.interp(np.log(tau_ref), np.log(tau[1:]), gap[1:]))
    later = tau > tau_ref
    onset = onset_time(np.r_[tau_ref, tau[later]], np.r_[0.0, gap[later] - gap_ref], level)
    return out | {"tau_onset": onset, "tau_ref": tau_ref, "gap_ref": gap_ref}


def onset_time(tau, gap, level: float) -> float | None:
    """The first τ where ``gap`` reaches ``level``, interpolated linearly in log τ between the grid
    points that bracket it (τ > 0 only); ``None`` when it never does."""
    tau, gap = np.asarray(tau, float), np.asarray(gap, float)
    keep = tau > 0
    tau, gap = tau[keep], gap[keep]
    above = np.nonzero(gap >= level)[0]
    if len(above) == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(tau[0])
    frac = (level - gap[i - 1]) / (gap[i] - gap[i - 1])
    return float(np.exp(np.log(tau[i - 1]) + frac * (np.log(tau[i]) - np.log(tau[i - 1]))))


def fit_onsets(psi_n, tau) -> dict:
    """Fits of the onset against ψ_n (needs ≥ 3 distinct ψ_n with an onset):

    - ``linear``: ``τ = slope·ψ_n + intercept`` (least squares), R², slope's 95 % interval (t);
    - ``power``: ``log τ = exponent·log ψ_n + c``; ``τ ∝ ψ_n`` means exponent 1;
    - ``proportional``: ``τ = c·ψ_n`` through the origin, ``c = Σψτ/Σψ²``, with its R².
    """
    from scipy import stats

    psi_n, tau = np.asarray(psi_n, float), np.asarray(tau, float)
    if len(np.unique(psi_n)) < 3:
        return {"points": len(psi_n), "note": "fewer than 3 distinct psi_n with an onset; no fit"}
    quantile = float(stats.t.ppf(0.975, len(psi_n) - 2))
    out = {"points": len(psi_n)}
    for key, (x, y) in {"linear": (psi_n, tau), "power": (np.log(psi_n), np.log(tau))}.items():
        fit = stats.linregress(x, y)
        slope_key = "slope" if key == "linear" else "exponent"
        out[key] = {slope_key: fit.slope, "intercept": fit.intercept, "r2": fit.rvalue ** 2,
                    f"{slope_key}_ci95": [fit.slope - quantile * fit.stderr, fit.slope + quantile * fit.stderr]}
    c = float(psi_n @ tau / (psi_n @ psi_n))
    residual = tau - c * psi_n
    out["proportional"] = {"c": c, "r2": float(1 - residual @ residual / ((tau - tau.mean()) @ (tau - tau.mean())))}
    return out


def summarize(cells: list[dict], settings: RFSettings) -> dict:
    """Per-cell onsets (and the test-loss minimum, the end of the generalization phase), and per
    ψ_p a fit of the mean onset over seeds against ψ_n, set beside the paper's ``τ ∝ ψ_n/Δ_t``:
    ``fits`` for the onset of the excess gap, ``fits_raw`` for the plain threshold rule."""
    a, delta = diffusion_coefficients(settings.t)
    coef = feature_coefficients(settings.t)
    keys = ("name", "d", "n", "p", "psi_n", "psi_p", "seed", "tau_onset", "tau_onset_raw", "tau_test_min",
            "tau_ref", "gap_ref")
    rows = [{k: c[k] for k in keys} | {"test_loss_min": min(c["test_loss"]), "final_gap": c["gap"][-1],
                                       "final_train_loss": c["train_loss"][-1]} for c in cells]
    return {"a_t": a, "delta_t": delta, **coef, "loss_floor": a * a, "onset_level": settings.onset_threshold * a * a,
            "rows": rows, "fits": _fits(rows, settings.psi_p, "tau_onset", delta, coef["v_t2"]),
            "fits_raw": _fits(rows, settings.psi_p, "tau_onset_raw", delta, coef["v_t2"])}


def _fits(rows: list[dict], psi_ps, key: str, delta: float, v_t2: float) -> dict:
    """Per ψ_p: the mean of ``key`` over seeds at each ψ_n (cells without an onset left out), fitted."""
    fits = {}
    for pp in psi_ps:
        by_n = {}
        for r in rows:
            if r["psi_p"] == pp and r[key] is not None:
                by_n.setdefault(r["psi_n"], []).append(r[key])
        psi = sorted(by_n)
        mean = [float(np.mean(by_n[v])) for v in psi]
        fit = fit_onsets(psi, mean)
        fit["psi_n"], fit["tau_onset_mean"] = psi, mean
        fit["tau_delta_over_psi_n"] = [m * delta / v for v, m in zip(psi, mean)]  # constant if τ ∝ ψ_n/Δ_t
        fit["tau_delta_v2_over_psi_n"] = [m * delta * v_t2 / v for v, m in zip(psi, mean)]  # … ∝ ψ_n/(Δ_t v_t²)
        fits[f"{pp:g}"] = fit
    return fits


def run_rf_study(name: str, settings: RFSettings, out, *, engine="local", workers: int = 1,
                 threads: int | None = None, log=print, progress: bool = False) -> dict:
    """Run every cell (``workers`` processes), then write ``out``: results.json, curves.csv,
    onsets.csv and the figures (:mod:`diffmem.studies.rf_figures`). Refuses an ``out`` that already holds
    any of them, before any work; every file is written atomically."""
    import time

    from diffmem.atomic import prepare_output, write_json, write_text
    from diffmem.studies.engines import as_engine
    from diffmem.studies.rf_figures import save_figures, FIGURES

    names = (RESULTS_JSON, CURVES_CSV, ONSETS_CSV, *FIGURES)
    out = prepare_output(out, kind="folder", names=names, create=False)
    margins = check_stability(settings)
    out = prepare_output(out, kind="folder", names=names)
    start = time.time()
    jobs = [(c["name"], simulate, (c, settings)) for c in settings.cells()]
    results = {}
    for key, result in as_engine(engine).run(jobs, workers=workers, threads=threads, out=out, progress=progress):
        results[key] = result
        if log is not None:
            log(f"{key}: onset tau = {result['tau_onset']}")
    cells = [results[c["name"]] for c in settings.cells()]
    summary = summarize(cells, settings)
    record = {"name": name, "settings": asdict(settings), "stability": margins,
              "wall_seconds": time.time() - start, **summary, "cells": cells}
    write_text(out / CURVES_CSV, _curves_csv(cells))
    write_text(out / ONSETS_CSV, _table_csv(summary["rows"]))
    save_figures(out, cells, summary, settings)
    write_json(out / RESULTS_JSON, record)  # last: its presence marks a finished output
    return record


RESULTS_JSON, CURVES_CSV, ONSETS_CSV = "results.json", "curves.csv", "onsets.csv"


def _table_csv(rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _curves_csv(cells: list[dict]) -> str:
    keys = ("step", "tau", "train_loss", "test_loss", "gap", "score_error")
    rows = [{"name": c["name"], "psi_n": c["psi_n"], "psi_p": c["psi_p"], "seed": c["seed"],
             **{k: c[k][i] for k in keys}} for c in cells for i in range(len(c["tau"]))]
    return _table_csv(rows)


def run(spec, out=None, *, engine="local", workers: int = 1, threads: int | None = None, log=None,
        progress: bool = False):
    """The study entry shape (:class:`~diffmem.studies.result.StudyResult`) over :func:`run_rf_study`:
    ``spec`` a TOML path or ``(name, RFSettings)``; ``out`` defaults to a folder named after it."""
    from diffmem.studies.result import StudyResult

    name, settings = parse_rf_spec(spec) if isinstance(spec, (str, Path)) else spec
    out = Path(name if out is None else out)
    record = run_rf_study(name, settings, out, engine=engine, workers=workers, threads=threads, log=log,
                          progress=progress)
    lines = []
    for key, fit in record["fits"].items():
        line = fit.get("linear")
        lines.append(f"psi_p = {key}: onset tau = {line['slope']:.4g} * psi_n {line['intercept']:+.4g} "
                     f"(R^2 = {line['r2']:.3f}; exponent {fit['power']['exponent']:.3f})" if line
                     else f"psi_p = {key}: {fit['note']}")
    return StudyResult("random-features", out, record["rows"], [*lines, f"results in {out}/{RESULTS_JSON}"], record)
