"""The two training timescales of Bonnaire et al. 2025 (seed 003): τ_gen and τ_mem against n.

Trained at several training-set sizes ``n`` with log-spaced EMA snapshots, each snapshot is measured
(:func:`measure_run`): ``f_mem`` = the fraction of generated images whose nearest training image is
less than 1/3 as far as the second nearest (with a bootstrap 95 % CI), and the sample quality =
the Fréchet distance (FD, lower is better) between generated and held-out images in a feature
space. From the curves (pure functions, :func:`tau_gen`, :func:`tau_mem`):

    τ_mem = the first training time with f_mem(t) > threshold                       (default 0.03)
    τ_gen = the first training time with FD(t) ≤ FD* + tolerance · (FD_max - FD*),   FD* = min_t FD(t)

both interpolated linearly in log t between the two snapshots that bracket the crossing (snapshots
are log-spaced). Seed 003 finds τ_mem ∝ n and τ_gen independent of n; :func:`fit_proportional`
fits ``τ_mem = a·n`` by least squares through the origin (a, its 95 % t-interval, R²) and
:func:`power_law` the exponent β of ``τ ∝ n^β`` (β ≈ 1 for τ_mem, β ≈ 0 for τ_gen).
Training time is measured in images seen (``step · batch``; the batch is the same for every n),
optimizer steps, or epochs (images / n, the collapse variable t/n of seed 003).

    OUT/<cell>/                  one run folder per n (as ``diffmem sweep`` makes them)
    OUT/<cell>/timescales.json   its per-snapshot measurements (resumable: kept while the settings hold)
    OUT/results.json, .csv       one row per n (τ_gen, τ_mem, ...); results.json adds the fits
    OUT/curves.csv               every snapshot of every run
    OUT/curves.png, collapse.png, tau_vs_n.png
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.stats

from diffmem.atomic import write_json, write_text
from diffmem.errors import InputError, check_number
from diffmem.progress import Progress
from diffmem.studies.folders import claim_folder, spec_difference
from diffmem.studies.specs import check_cells, mode_settings
from diffmem.studies.timescales_figures import curves_figure, point_time, tau_figure

TIME_UNITS = ("images", "steps", "epochs")
CURVE_FILE, RESULT_FILE, TABLE_CSV, CURVES_CSV = "timescales.json", "results.json", "results.csv", "curves.csv"
SPEC_FILE = "spec.json"  # the study a folder holds (a folder belongs to one spec)


@dataclass(frozen=True)
class TimescaleSettings:
    """The ``[timescales]`` table of a spec: how snapshots are measured and τ extracted."""

    samples: int = 200  # generated images per snapshot
    heldout: int = 500  # held-out images for the FD
    features: str = "classifier"  # feature space of the FD (diffmem.metrics.features)
    threshold: float = 0.03  # τ_mem: f_mem first above this fraction
    tolerance: float = 0.1  # τ_gen: FD within this share of its range above its plateau
    time: str = "images"  # images | steps | epochs
    bootstrap: int = 1000  # resamples of f_mem's CI

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        fix("samples", check_number("samples", self.samples, lo=2, hi=10**6, integer=True))
        fix("heldout", check_number("heldout", self.heldout, lo=2, hi=10**7, integer=True))
        fix("threshold", check_number("threshold", self.threshold, lo=0, hi=1, hi_open=True))
        fix("tolerance", check_number("tolerance", self.tolerance, lo=0, hi=1, lo_open=True, hi_open=True))
        fix("bootstrap", check_number("bootstrap", self.bootstrap, lo=1, hi=10**7, integer=True))
        if self.time not in TIME_UNITS:
            raise InputError(f"expected one of {', '.join(TIME_UNITS)}, got {self.time!r}", param="time")
        if not isinstance(self.features, str) or not self.features.strip():
            raise InputError(f"expected a feature space name or path, got {self.features!r}", param="features")

    def measurement(self) -> dict:
        """The fields that change a snapshot's numbers (a stored curve is reused only if they match)."""
        return dict(samples=self.samples, heldout=self.heldout, features=self.features, bootstrap=self.bootstrap)


# ---------------------------------------------------------------------------------------------
# τ from curves: pure functions of (times, values).


def _curve(times, values) -> tuple[np.ndarray, np.ndarray]:
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    if t.ndim != 1 or t.shape != v.shape or len(t) == 0:
        raise InputError(f"times and values must be equal-length 1-D, got {t.shape} and {v.shape}", param="times")
    if not (np.isfinite(t).all() and np.isfinite(v).all()) or (t <= 0).any() or (np.diff(t) <= 0).any():
        raise InputError("times must be positive and increasing, values finite", param="times")
    return t, v


def first_crossing(times, values, level: float, *, above: bool = True) -> float | None:
    """The first time the curve passes ``level``: the first point ``i`` with ``v_i > level`` (or
    ``v_i ≤ level`` when ``above`` is False), interpolated linearly in ``log t`` from point ``i-1``:

        log τ = log t_{i-1} + (level - v_{i-1}) / (v_i - v_{i-1}) · (log t_i - log t_{i-1}).

    ``t_0`` when the first point already passes (an upper bound), None when no point does."""
    t, v = _curve(times, values)
    passed = v > level if above else v <= level
    if not passed.any():
        return None
    i = int(np.argmax(passed))
    if i == 0:
        return float(t[0])
    frac = (level - v[i - 1]) / (v[i] - v[i - 1])
    return float(np.exp(np.log(t[i - 1]) + frac * (np.log(t[i]) - np.log(t[i - 1]))))


def tau_mem(times, f_mem, threshold: float = 0.03) -> float | None:
    """τ_mem: the first time the memorized fraction exceeds ``threshold`` (None: never)."""
    return first_crossing(times, f_mem, threshold, above=True)


def tau_gen(times, fd, tolerance: float = 0.1) -> float | None:
    """τ_gen: the first time the FD (lower is better) is within ``tolerance`` of its range above its
    plateau ``FD* = min FD``, i.e. ``FD(t) ≤ FD* + tolerance · (max FD - FD*)``."""
    _, v = _curve(times, fd)
    plateau = float(v.min())
    return first_crossing(times, fd, plateau + tolerance * (float(v.max()) - plateau), above=False)


def fit_proportional(n, tau, confidence: float = 0.95) -> dict:
    """Least squares through the origin, ``τ = a·n``:

        a = Σ n_i τ_i / Σ n_i²,   s² = Σ (τ_i - a n_i)² / (k - 1),   se(a) = s / √(Σ n_i²),
        interval = a ± t_{(1+confidence)/2, k-1} · se(a),   R² = 1 - Σ (τ_i - a n_i)² / Σ (τ_i - τ̄)².

    Needs k ≥ 2 points. Returns dict(a, interval, r2, k)."""
    n, tau = np.asarray(n, dtype=float), np.asarray(tau, dtype=float)
    k = len(n)
    if k < 2:
        raise InputError(f"a fit needs at least 2 sizes with a τ, got {k}", param="sizes")
    a = float((n * tau).sum() / (n * n).sum())
    resid = tau - a * n
    se = math.sqrt(float((resid**2).sum()) / (k - 1) / float((n * n).sum()))
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, k - 1)) * se
    total = float(((tau - tau.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else float("nan")
    return dict(a=a, interval=[a - half, a + half], r2=r2, k=k)


def power_law(n, tau, confidence: float = 0.95) -> dict:
    """The exponent β of ``τ ∝ n^β``: the slope of ``log τ`` on ``log n`` (scipy's linregress), its
    t-interval (k - 2 degrees of freedom; None for k = 2) and the p-value of β = 0."""
    n, tau = np.asarray(n, dtype=float), np.asarray(tau, dtype=float)
    if len(n) < 2:
        raise InputError(f"a fit needs at least 2 sizes with a τ, got {len(n)}", param="sizes")
    k = len(n)
    if np.ptp(np.log(tau)) == 0:  # a constant τ: β = 0 exactly (linregress would return NaNs)
        return dict(beta=0.0, interval=[0.0, 0.0] if k >= 3 else None, p_value=1.0 if k >= 3 else None, k=k)
    fit = scipy.stats.linregress(np.log(n), np.log(tau))
    if k < 3:
        return dict(beta=float(fit.slope), interval=None, p_value=None, k=k)
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, k - 2)) * float(fit.stderr)
    return dict(beta=float(fit.slope), interval=[fit.slope - half, fit.slope + half], p_value=float(fit.pvalue), k=k)


def analyze(curves: dict, settings: TimescaleSettings) -> dict:
    """Rows (one per n) and fits from ``{n: [snapshot points]}`` (points as :func:`measure_snapshot`
    returns them; time in ``settings.time``)."""
    rows = []
    for n in sorted(curves):
        points = sorted(curves[n], key=lambda p: p["step"])
        t = [point_time(p, settings.time) for p in points]
        f, fd = [p["f_mem"] for p in points], [p["fd"] for p in points]
        rows.append(dict(n=n, tau_gen=tau_gen(t, fd, settings.tolerance), tau_mem=tau_mem(t, f, settings.threshold),
                         fd_plateau=min(fd), f_mem_final=f[-1], f_mem_max=max(f), time_final=t[-1],
                         snapshots=len(points), unit=settings.time))
    fits = {}
    for key in ("tau_mem", "tau_gen"):
        ok = [r for r in rows if r[key] is not None]
        if len(ok) >= 2:
            ns, taus = [r["n"] for r in ok], [r[key] for r in ok]
            fits[key] = dict(proportional=fit_proportional(ns, taus), power_law=power_law(ns, taus), sizes=ns)
    return dict(rows=rows, fits=fits, settings=dataclasses.asdict(settings), summary=summary_line(rows, fits, settings))


def summary_line(rows: list[dict], fits: dict, settings: TimescaleSettings) -> str:
    """One line: τ_mem = a·n with its interval and R², and τ_gen's exponent in n."""
    unit, parts = settings.time, []
    if "tau_mem" in fits:
        p, b = fits["tau_mem"]["proportional"], fits["tau_mem"]["power_law"]
        parts.append(f"τ_mem = a·n with a = {p['a']:.4g} ({unit} per training image) [{p['interval'][0]:.4g}, "
                     f"{p['interval'][1]:.4g}], R² = {p['r2']:.3f} (τ_mem ∝ n^{b['beta']:.2f})")
    else:
        never = [r["n"] for r in rows if r["tau_mem"] is None]
        parts.append(f"τ_mem not reached (f_mem ≤ {settings.threshold:g}) at n = {never}")
    if "tau_gen" in fits:
        b = fits["tau_gen"]["power_law"]
        interval = f" [{b['interval'][0]:.2f}, {b['interval'][1]:.2f}]" if b["interval"] else ""
        flat = b["interval"] is not None and b["interval"][0] <= 0 <= b["interval"][1]
        parts.append(f"τ_gen ∝ n^{b['beta']:.2f}{interval} ({'consistent with' if flat else 'not'} independent of n)")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Measuring snapshots.


def quality_space(features: str, heldout, source: str | None = None, device: str = "cpu"):
    """(extractor, held-out features): the FD's feature space and the held-out side of it."""
    from diffmem.metrics.features import load_features

    extractor = load_features(features, reference=heldout, source=source, device=device)
    return extractor, extractor.embed(heldout)


def measure_snapshot(path, train_set, extractor, heldout_features, settings: TimescaleSettings,
                     device: str = "cpu") -> dict:
    """Sample ``settings.samples`` images from one snapshot (Heun, 18 steps, the run's tracking
    seed, labels cycled over the training labels), quantize to uint8 (seed 001), and measure f_mem
    (with CI) against ``train_set`` and the FD of their features to ``heldout_features``."""
    import torch

    from diffmem.data.imageset import to_uint8
    from diffmem.metrics.memorization import memorization
    from diffmem.metrics.quality import frechet_distance
    from diffmem.rng import TRACK, derive_seed
    from diffmem.runs import load_run
    from diffmem.sampling import sample

    run = load_run(path, device=device)
    rec, num = run.record, settings.samples
    labels = torch.from_numpy(train_set.labels[np.arange(num) % len(train_set)]) if rec["num_classes"] else None
    generated = to_uint8(sample(run.denoiser, num, labels=labels, sampler="heun", steps=18,
                                seed=derive_seed(rec["seed"], TRACK), device=device).numpy())
    mem = memorization(train_set, generated, bootstrap=settings.bootstrap, device=device)
    fd = float(frechet_distance(extractor.embed(generated), heldout_features))
    return dict(epoch=run.epoch, step=run.step, images=run.step * rec["batch"], n=rec["num_images"],
                f_mem=mem.ratio, ci95=[mem.ci95[0], mem.ci95[1]], stderr=mem.stderr, fd=fd)


def measure_run(folder, train_set, heldout, settings: TimescaleSettings, *, source: str | None = None,
                device: str = "cpu", log=None) -> list[dict]:
    """Every snapshot of the run in ``folder`` measured (:func:`measure_snapshot`), in step order.
    Measurements are kept in ``folder/timescales.json`` after each snapshot, keyed on everything they
    depend on (:func:`cache_key`); a re-run with the same key measures only the snapshots not there yet."""
    from diffmem.runs import list_snapshots

    folder = Path(folder)
    stored = _read_curve(folder / CURVE_FILE)
    key = cache_key(settings, train_set, heldout, source)
    done = {p["epoch"]: p for p in stored["points"]} if stored.get("settings") == key else {}
    todo = [(e, p) for e, p in list_snapshots(folder) if e not in done]
    if todo:
        from diffmem.denoisers.probe import check_shape
        from diffmem.runs import load_run

        D = load_run(todo[0][1], device=device, param=None).denoiser  # the sets must be the model's images
        check_shape(D, train_set, "train", "training images")
        check_shape(D, heldout, "heldout", "held-out images")
        extractor, heldout_features = quality_space(settings.features, heldout, source, device)
        snapshots = Progress(len(todo), enabled=log is not None, echo=log)
        for epoch, path in todo:
            done[epoch] = measure_snapshot(path, train_set, extractor, heldout_features, settings, device)
            write_json(folder / CURVE_FILE, dict(settings=key,
                                                 points=sorted(done.values(), key=lambda p: p["step"])))
            p = done[epoch]
            snapshots.done(f"{folder.name} epoch {epoch}: f_mem {p['f_mem']:.3f} [{p['ci95'][0]:.3f}, "
                           f"{p['ci95'][1]:.3f}], FD {p['fd']:.4g}")
    return sorted(done.values(), key=lambda p: p["step"])


def cache_key(settings: TimescaleSettings, train_set, heldout, source) -> dict:
    """What a snapshot's stored measurement depends on: the measurement settings, the feature
    source, and the fingerprints of the training and held-out images (so a cache is never answered
    for other sets)."""
    from diffmem.config import data_fingerprint

    prints = {name: data_fingerprint(np.asarray(getattr(s, "images", s)), getattr(s, "labels", None))
              for name, s in (("train_sha256", train_set), ("heldout_sha256", heldout))}
    return {**settings.measurement(), "source": source, **prints}


def _read_curve(path: Path) -> dict:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"points": []}
    return stored if isinstance(stored, dict) and isinstance(stored.get("points"), list) else {"points": []}


# ---------------------------------------------------------------------------------------------
# The driver: a spec in mode "timescales", one job (train, then measure) per n.


def settings_of(spec) -> TimescaleSettings:
    """The spec's ``[timescales]`` table validated (errors name the file and the key); the spec must
    vary ``size`` (≥ 2 values) and nothing else, at one batch no larger than its smallest size."""
    settings = mode_settings(spec, TimescaleSettings)
    if list(spec.axes) != ["data.size"] or len(spec.axes["data.size"]) < 2:
        raise InputError(f"{spec.path}: [axes] size: a timescales spec varies size (at least 2 values) and nothing else")
    batch = spec.cells()[0].train.batch
    if batch > min(spec.axes["data.size"]):
        raise InputError(f"{spec.path}: [train] batch: {batch} is larger than the smallest size "
                         f"{min(spec.axes['data.size'])}; one fixed batch ≤ every n keeps time comparable")
    return settings


def job_timescales(cell, settings: TimescaleSettings, folder: str, heldout, report: bool = False) -> dict:
    """One n: train (or find, or resume) the run, then measure its snapshots (with ``report``, a
    line on stderr as each is measured, with an ETA). Runs in a worker."""
    from diffmem.data.spec import make_dataset
    from diffmem.studies.sweep import train_dataset

    dataset = make_dataset(cell.data)
    train_dataset(cell.train, dataset, Path(folder), recipe=cell.data)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if report else None
    return dict(n=cell.data.size, points=measure_run(folder, dataset, heldout, settings, source=cell.data.source,
                                                     log=log))


def _check_features(spec, settings: TimescaleSettings, heldout, source: str) -> None:
    """The FD's feature space loaded and tried on the held-out images now, not after training."""
    from diffmem.metrics.features import load_features

    try:
        load_features(settings.features, reference=heldout, source=source)
    except InputError as err:
        raise InputError(f"{spec.path}: [timescales] features: {err.detail}") from None


def run_timescales(spec, out=None, *, engine="local", workers: int = 1, threads: int | None = None, log=None,
                   progress: bool = False) -> dict:
    """Run a timescales spec (a path or a parsed :class:`~diffmem.studies.specs.Spec`) into ``out``
    (default: the spec's name): the per-n runs on ``engine`` (``workers`` at a time), then the
    analysis (:func:`analyze`), the tables and the figures. Returns the analysis."""
    from diffmem.studies.engines import as_engine, check_pool

    spec = _spec(spec)
    settings = settings_of(spec)
    workers, threads = check_pool(workers, threads)
    out = Path(out if out is not None else spec.name)
    cells = check_cells(spec)  # every size's data, plan and network, before the first write
    heldout = _heldout(spec, max(cells, key=lambda c: c.data.size).data, settings.heldout)
    _check_features(spec, settings, heldout, cells[0].data.source)
    claim_folder(out, SPEC_FILE, lambda stored: spec_difference(stored, spec, cells,
                                                                {"settings": (TimescaleSettings, settings)}),
                 legacy={c.name for c in cells} | {RESULT_FILE, TABLE_CSV, CURVES_CSV, "curves.png", "tau_vs_n.png",
                                                   "collapse.png", "report"})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SPEC_FILE, {"spec": spec.path, "name": spec.name, "mode": spec.mode,
                                 "settings": asdict(settings), "cells": [c.to_dict() for c in cells]})
    report = progress and log is not None
    jobs = [(c.name, job_timescales, (c, settings, str(out / c.name), heldout, report)) for c in cells]
    curves, runs = {}, Progress(len(jobs), enabled=report, echo=log)
    for key, result in as_engine(engine).run(jobs, workers=workers, threads=threads, out=out):
        curves[result["n"]] = result["points"]
        runs.done(f"{key}: {len(result['points'])} snapshots measured")
    result = analyze(curves, settings)
    write_results(out, result, curves, spec)
    return result


def run(spec, out=None, *, engine="local", workers: int = 1, threads: int | None = None, log=None,
        progress: bool = False):
    """The study entry shape (:class:`~diffmem.studies.result.StudyResult`) over :func:`run_timescales`."""
    from diffmem.studies.result import StudyResult

    spec = _spec(spec)
    result = run_timescales(spec, out, engine=engine, workers=workers, threads=threads, log=log, progress=progress)
    fmt = lambda v: "never" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [f"n = {row['n']:>6}: tau_gen {fmt(row['tau_gen'])}, tau_mem {fmt(row['tau_mem'])} "
             f"{result['settings']['time']}; f_mem at the end {row['f_mem_final']:.3f}" for row in result["rows"]]
    folder = Path(out if out is not None else spec.name)
    return StudyResult("timescales", folder, result["rows"], [*lines, result["summary"], f"results in {folder / RESULT_FILE}"],
                       result)


def _spec(spec):
    from diffmem.studies.specs import Spec, parse_spec

    return spec if isinstance(spec, Spec) else parse_spec(spec, mode="timescales")


def _heldout(spec, largest, num: int):
    """``num`` held-out images outside the largest training set (subsets nest: outside every one)."""
    from diffmem.data.spec import heldout_set

    try:
        return heldout_set(largest, num)
    except InputError as err:
        raise InputError(f"{spec.path}: [timescales] heldout: {err.detail}") from None


def write_results(out: Path, result: dict, curves: dict, spec=None) -> None:
    """results.json (rows, fits, settings, summary), results.csv, curves.csv and the figures."""
    write_json(out / RESULT_FILE, {"spec": getattr(spec, "path", None), **result}, allow_nan=False)
    write_text(out / TABLE_CSV, _csv(result["rows"]))
    flat = [dict(n=n, time=point_time(p, result["settings"]["time"]), **{k: v for k, v in p.items() if k != "n"})
            for n in sorted(curves) for p in curves[n]]
    write_text(out / CURVES_CSV, _csv(flat))
    from diffmem.plots import save_figure

    save_figure(curves_figure(curves, result, collapse=False), out / "curves.png")
    save_figure(curves_figure(curves, result, collapse=True), out / "collapse.png")
    save_figure(tau_figure(result), out / "tau_vs_n.png")


def _csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else "" if v is None else v
                         for k, v in row.items()})
    return buffer.getvalue()
