"""The two training timescales of Bonnaire et al. 2025 (seed 003): τ_gen and τ_mem against n.

Trained at several training-set sizes ``n`` with log-spaced EMA snapshots, each snapshot is measured
(:func:`measure_run`): ``f_mem`` = the fraction of generated images whose nearest training image is
less than 1/3 as far as the second nearest (with a bootstrap 95 % CI), and the sample quality =
the Fréchet distance (FD, lower is better) between generated and held-out images in a feature
space. From the curves (pure functions, :func:`tau_gen`, :func:`tau_mem`):

    τ_mem = the first training time with f_mem(t) > threshold                       (default 0.03)
    τ_gen = the first training time with FD(t) ≤ FD* + tolerance · (FD_max - FD*),   FD* = min_t FD(t)

both interpolated linearly in log t between the bracketing snapshots (log-spaced); τ_gen only over
the snapshots before f_mem first exceeds the threshold (:func:`generalization_window`: a copying
snapshot's FD is not the generalization plateau). Seed 003: τ_mem ∝ n, τ_gen flat in n;
:func:`fit_proportional` fits ``τ_mem = a·n`` through the origin (a, 95 % t-interval, R²),
:func:`power_law` the exponent of ``τ ∝ n^β``. Time: images seen (``step · batch``), steps, or
epochs (images / n, seed 003's t/n). Seed 003's protocol: ``batch_cap = 512`` (batch min(512, n)),
``[train] steps`` (one step grid for every n; with full batches ``snapshots = "log:K"`` is that grid),
``time = "steps"``, ``[axes] "train.seed" = [...]``: rows per (n, seed), ``by_n`` the mean over
seeds with a t-interval, fits over every run.

    OUT/<cell>/                  one run folder per n (as ``diffmem sweep`` makes them)
    OUT/<cell>/timescales.json   its per-snapshot measurements (resumable: kept while the settings hold)
    OUT/results.json, .csv       one row per run (τ_gen, τ_mem, ...); results.json adds by_n and the fits
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
from diffmem.studies.taus import (_curve, first_crossing, fit_proportional, generalization_window,  # noqa: F401
                                  power_law, tau_gen, tau_mem)
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
    batch_cap: int = 0  # > 0: each n trains at batch min(batch_cap, n) (seed 003: 512); 0: [train] batch for all

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        fix("samples", check_number("samples", self.samples, lo=2, hi=10**6, integer=True))
        fix("heldout", check_number("heldout", self.heldout, lo=2, hi=10**7, integer=True))
        fix("threshold", check_number("threshold", self.threshold, lo=0, hi=1, hi_open=True))
        fix("tolerance", check_number("tolerance", self.tolerance, lo=0, hi=1, lo_open=True, hi_open=True))
        fix("bootstrap", check_number("bootstrap", self.bootstrap, lo=1, hi=10**7, integer=True))
        fix("batch_cap", check_number("batch_cap", self.batch_cap, lo=0, hi=10**7, integer=True))
        if self.time not in TIME_UNITS:
            raise InputError(f"expected one of {', '.join(TIME_UNITS)}, got {self.time!r}", param="time")
        if not isinstance(self.features, str) or not self.features.strip():
            raise InputError(f"expected a feature space name or path, got {self.features!r}", param="features")

    def measurement(self) -> dict:
        """The fields that change a snapshot's numbers (a stored curve is reused only if they match)."""
        return dict(samples=self.samples, heldout=self.heldout, features=self.features, bootstrap=self.bootstrap)


# ---------------------------------------------------------------------------------------------
# τ from curves (the pure functions live in diffmem.studies.taus) and the analysis.


def analyze(curves: dict, settings: TimescaleSettings) -> dict:
    """Rows (one per run), ``by_n`` (mean over seeds) and fits from ``{n or (n, seed): [snapshot
    points]}`` (points as :func:`measure_snapshot` returns them; time in ``settings.time``)."""
    rows = []
    curves = {k if isinstance(k, tuple) else (k, None): v for k, v in curves.items()}  # keys (n, seed)
    for n, seed in sorted(curves, key=lambda k: (k[0], k[1] or 0)):
        points = sorted(curves[(n, seed)], key=lambda p: p["step"])
        t = [point_time(p, settings.time) for p in points]
        f, fd = [p["f_mem"] for p in points], [p["fd"] for p in points]
        k = generalization_window(f, settings.threshold)  # τ_gen only from snapshots that do not copy yet
        rows.append(dict(n=n, seed=seed, tau_gen=tau_gen(t[:k], fd[:k], settings.tolerance) if k >= 2 else None,
                         tau_mem=tau_mem(t, f, settings.threshold), fd_plateau=min(fd[:k]) if k else None,
                         snapshots_before_mem=k, f_mem_final=f[-1], f_mem_max=max(f), time_final=t[-1],
                         snapshots=len(points), unit=settings.time))
    fits = {}
    for key in ("tau_mem", "tau_gen"):
        ok = [r for r in rows if r[key] is not None]
        if len({r["n"] for r in ok}) >= 2:
            ns, taus = [r["n"] for r in ok], [r[key] for r in ok]
            fits[key] = dict(proportional=fit_proportional(ns, taus), power_law=power_law(ns, taus), sizes=ns)
    return dict(rows=rows, by_n=by_size(rows), fits=fits, settings=dataclasses.asdict(settings),
                summary=summary_line(rows, fits, settings))


def by_size(rows: list[dict], confidence: float = 0.95) -> list[dict]:
    """Per n: runs; τ_mem, τ_gen, τ_mem/n: mean over the runs that reached it, t-interval (≥ 2), count."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        mine = [r for r in rows if r["n"] == n]
        row = {"n": n, "runs": len(mine)}
        for key, scale in (("tau_mem", 1), ("tau_gen", 1), ("tau_mem_over_n", n)):
            v = np.array([r[key.replace("_over_n", "")] / scale for r in mine
                          if r[key.replace("_over_n", "")] is not None], dtype=float)
            half = (float(scipy.stats.t.ppf((1 + confidence) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
                    if len(v) >= 2 else None)
            row[key] = float(v.mean()) if len(v) else None
            row[f"{key}_ci95"] = [row[key] - half, row[key] + half] if half is not None else None
            row[f"{key}_reached"] = int(len(v))
        out.append(row)
    return out


def summary_line(rows: list[dict], fits: dict, settings: TimescaleSettings) -> str:
    """One line: τ_mem = a·n with its interval and R², and τ_gen's exponent in n."""
    unit, parts = settings.time, []
    if "tau_mem" in fits:
        p, b = fits["tau_mem"]["proportional"], fits["tau_mem"]["power_law"]
        parts.append(f"τ_mem = a·n with a = {p['a']:.4g} ({unit} per training image) [{p['interval'][0]:.4g}, "
                     f"{p['interval'][1]:.4g}], R² = {p['r2']:.3f} (τ_mem ∝ n^{b['beta']:.2f})")
    else:
        never = sorted({r["n"] for r in rows if r["tau_mem"] is None})
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
    vary ``size`` (≥ 2 values), optionally ``seed``, and nothing else, at one batch no larger than its
    smallest size (unless ``batch_cap`` sets the batch per n)."""
    settings = mode_settings(spec, TimescaleSettings)
    if sorted(set(spec.axes) - {"train.seed"}) != ["data.size"] or len(spec.axes["data.size"]) < 2:
        raise InputError(f"{spec.path}: [axes] size: a timescales spec varies size (at least 2 values), "
                         f"optionally seed, and nothing else")
    batch = spec.cells()[0].train.batch
    if not settings.batch_cap and batch > min(spec.axes["data.size"]):
        raise InputError(f"{spec.path}: [train] batch: {batch} is larger than the smallest size "
                         f"{min(spec.axes['data.size'])}; one fixed batch ≤ every n keeps time comparable")
    return settings


def job_timescales(cell, settings: TimescaleSettings, folder: str, heldout, report: bool = False) -> dict:
    """One n: train (or find, or resume) the run, then measure its snapshots (with ``report``, a
    line on stderr as each is measured, with an ETA). Runs in a worker."""
    from diffmem.data.spec import make_dataset
    from diffmem.studies.sweep import train_dataset

    dataset = make_dataset(cell.data)
    config = cell.train.replace(batch=min(settings.batch_cap, cell.data.size)) if settings.batch_cap else cell.train
    train_dataset(config, dataset, Path(folder), recipe=cell.data)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if report else None
    return dict(n=cell.data.size, seed=config.seed,
                points=measure_run(folder, dataset, heldout, settings, source=cell.data.source, log=log))


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
        curves[(result["n"], result["seed"])] = result["points"]
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
    lines = _lines(result)
    folder = Path(out if out is not None else spec.name)
    return StudyResult("timescales", folder, result["rows"], [*lines, result["summary"], f"results in {folder / RESULT_FILE}"],
                       result)


def _lines(result: dict) -> list[str]:
    """One line per run (with its seed), and per n with several runs the means and t-intervals."""
    fmt, unit, lines = (lambda v: "never" if v is None else f"{v:.4g}"), result["settings"]["time"], []
    for row in result["rows"]:
        seed = "" if row["seed"] is None else f" seed {row['seed']}"
        lines.append(f"n = {row['n']:>6}{seed}: tau_gen {fmt(row['tau_gen'])}, tau_mem {fmt(row['tau_mem'])} {unit}; "
                     f"f_mem at the end {row['f_mem_final']:.3f}")
    for row in (r for r in result["by_n"] if r["runs"] > 1):
        ci = lambda k: "" if row[f"{k}_ci95"] is None else " [{:.4g}, {:.4g}]".format(*row[f"{k}_ci95"])  # noqa: E731
        lines.append(f"n = {row['n']:>6}, mean of {row['runs']} runs: tau_gen {fmt(row['tau_gen'])}{ci('tau_gen')} "
                     f"({row['tau_gen_reached']} reached), tau_mem {fmt(row['tau_mem'])}{ci('tau_mem')} "
                     f"({row['tau_mem_reached']} reached), tau_mem/n {fmt(row['tau_mem_over_n'])}{ci('tau_mem_over_n')}")
    return lines


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
    flat = [dict(n=n, seed=seed, time=point_time(p, result["settings"]["time"]), **{k: v for k, v in p.items() if k != "n"})
            for (n, seed), points in ((k if isinstance(k, tuple) else (k, None), v) for k, v in curves.items())
            for p in points]
    write_text(out / CURVES_CSV, _csv(flat))
    from diffmem.plots import save_figure

    save_figure(curves_figure(flat, result, collapse=False), out / "curves.png")
    save_figure(curves_figure(flat, result, collapse=True), out / "collapse.png")
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
