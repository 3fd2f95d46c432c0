"""Sweeps: a base config and axes over any knob (:mod:`diffmem.studies.specs`), run as resumable cells on a
local pool or Ray (:mod:`diffmem.studies.engines`), gathered into one table.

    OUT/sweep.json                 the spec as run (cells and their configs)
    OUT/<cell>/                    mode "runs": the cell's run folder (config.json, snapshots, ...)
    OUT/<cell>/size-000064/        mode "emm": one run folder per |D| ...
    OUT/<cell>/emm.json            ... and the cell's EMM estimate
    OUT/results.csv, results.json  one row per cell
    OUT/seeds.csv, seeds.json      with a ``train.seed`` axis: one row per configuration over its
                                   training seeds (:mod:`diffmem.studies.seeds`: intervals with the seed spread)

Re-running the same sweep skips finished runs (``summary.json`` present; their config and data
must match the spec, else a clear error), resumes unfinished ones from their last state, and
rebuilds the table from the folders — so a sweep killed at any moment and re-run gives the table an
uninterrupted sweep gives (wall times aside).
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from diffmem.atomic import write_json, write_text
from diffmem.config import TrainConfig
from diffmem.data.spec import DataSpec, make_dataset
from diffmem.studies.emm import EMMEstimate, SizePoint, adaptive_search, estimate_emm
from diffmem.errors import InputError
from diffmem.studies.engines import check_engine
from diffmem.studies.folders import check_out_path, claim_folder, spec_difference
from diffmem.progress import Progress
from diffmem.runs import CONFIG_FILE, SUMMARY_FILE, read_record
from diffmem.studies.specs import Cell, EMMSettings, Spec, check_cells

MEMORIZATION_ONSET = 0.1  # "first memorization": the first tracked epoch with a ratio at least this
SWEEP_FILE, EMM_FILE, TABLE_CSV, TABLE_JSON = "sweep.json", "emm.json", "results.csv", "results.json"
SEEDS_TABLE = "seeds"  # seeds.csv, seeds.json
TIMING_FILE, DATA_FILE = "wall_time.json", "data.json"


# ---------------------------------------------------------------------------------------------
# One run: train (or resume, or find finished) and read its result.


def train_run(data: DataSpec, config: TrainConfig, folder: Path) -> dict:
    """Train ``config`` on the training set ``data`` describes (:func:`train_dataset`, which also
    records the recipe in ``folder/data.json``). Returns the run's summary."""
    return train_dataset(config, make_dataset(data), folder, recipe=data)


def train_dataset(config: TrainConfig, dataset, folder: Path, recipe: DataSpec | None = None) -> dict:
    """Train ``config`` on ``dataset`` into ``folder`` unless it is finished there; resume a partial
    run; refuse a folder whose config or data differ. Adds this session's seconds to
    ``wall_time.json`` and, given the ``recipe``, writes it to ``data.json`` (for reports and
    ``diffmem select``). Returns the run's summary."""
    from diffmem.training import train

    folder = Path(folder)
    if (folder / SUMMARY_FILE).exists():
        _check_finished(folder, config, dataset)
        if recipe is not None and not (folder / DATA_FILE).exists():
            write_json(folder / DATA_FILE, recipe.to_dict())
        return json.loads((folder / SUMMARY_FILE).read_text())
    resume = (folder / CONFIG_FILE).exists()
    start = time.time()
    try:
        summary = train(config, dataset, folder, resume=resume)
    except InputError as err:
        raise InputError(f"{folder}: the existing run does not match the spec ({err})") from None
    elapsed = time.time() - start
    previous = json.loads((folder / TIMING_FILE).read_text())["seconds"] if (folder / TIMING_FILE).exists() else 0.0
    write_json(folder / TIMING_FILE, {"seconds": previous + elapsed})
    if recipe is not None:
        write_json(folder / DATA_FILE, recipe.to_dict())
    return summary


def _check_finished(folder: Path, config: TrainConfig, dataset) -> None:
    from diffmem.config import data_fingerprint

    stored = read_record(folder)
    changed = config.differences(TrainConfig.from_dict(stored))
    if changed:
        raise InputError(f"{folder}: finished with {changed[0]} = {stored.get(changed[0])!r}, but the spec now says "
                         f"{getattr(config, changed[0])!r}; use a new output folder or restore the spec")
    if stored.get("data_sha256") != data_fingerprint(dataset.images, dataset.labels):
        raise InputError(f"{folder}: finished on other data than the spec's [data] now gives; use a new output folder")


def run_row(folder: Path) -> dict:
    """The table columns of a finished run."""
    folder = Path(folder)
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    curve = summary["memorization_curve"]
    best = max(curve, key=lambda r: r["ratio"]) if curve else None
    onset = next((r["epoch"] for r in curve if r["ratio"] >= MEMORIZATION_ONSET), None)
    timing = folder / TIMING_FILE
    return dict(max_ratio=best["ratio"] if best else None, ci_lo=best["ci95"][0] if best else None,
                ci_hi=best["ci95"][1] if best else None, max_ratio_epoch=best["epoch"] if best else None,
                first_memorization_epoch=onset, final_loss=summary["final_loss"], epochs=summary["epochs"],
                steps=summary["steps"], stopped_by_guard=bool(summary.get("stopped")),
                num_images=summary["num_images"], parameters=summary["parameters"],
                wall_time_s=round(json.loads(timing.read_text())["seconds"], 1) if timing.exists() else None)


# ---------------------------------------------------------------------------------------------
# EMM cells: one run per size.


def size_config(cell: Cell, size: int, settings: EMMSettings) -> tuple[DataSpec, TrainConfig]:
    """The data and config of a cell's run at |D| = size (batch ≤ |D| with ``clip_batch``)."""
    config = cell.train
    if settings.clip_batch and config.batch > size:
        config = config.replace(batch=size)
    if settings.max_samples and config.track_every:  # keep a snapshot at every measurement, to re-measure
        config = config.replace(snapshots=",".join(str(e) for e in _track_epochs(config, size)))
    return cell.data.replace(size=size), config


def _track_epochs(config: TrainConfig, size: int) -> list[int]:
    total = config.epochs if config.epochs is not None else config.steps * config.batch / size
    return list(range(config.track_every, int(total) + 1, config.track_every)) or [1]


def size_folder(cell_folder: Path, size: int) -> Path:
    return Path(cell_folder) / f"size-{size:06d}"


def measure_size(cell: Cell, size: int, settings: EMMSettings, cell_folder: Path) -> SizePoint:
    """Train (or find) the run at ``size`` and return its highest tracked ratio (seed 001)."""
    data, config = size_config(cell, size, settings)
    folder = size_folder(cell_folder, size)
    train_run(data, config, folder)
    point = size_point(folder)
    if point is None:
        raise InputError(f"{cell.name}: EMM runs must track memorization; set track_every in [train]")
    return point


def size_point(folder: Path) -> SizePoint | None:
    """A finished run's highest tracked ratio (seed 001's per-run number) as a SizePoint; None when
    the run tracked nothing."""
    curve = json.loads((Path(folder) / SUMMARY_FILE).read_text())["memorization_curve"]
    if not curve:
        return None
    best = max(curve, key=lambda r: r["ratio"])
    record = read_record(folder)
    return SizePoint(record["num_images"], best["ratio"], tuple(best["ci95"]), record["track_samples"],
                     record["total_steps"] * record["batch"], str(folder), best["epoch"])


def remeasure(point: SizePoint, num: int, data: DataSpec) -> SizePoint:
    """The same run's best snapshot measured again with ``num`` samples (sampling, no training)."""
    from diffmem.runs import load_run, snapshot_name
    from diffmem.tracking import track_memorization

    loaded = load_run(Path(point.run) / snapshot_name(int(point.epoch)))
    result = track_memorization(loaded.denoiser, make_dataset(data), loaded.record, "cpu", num=num)
    return SizePoint(point.size, result["ratio"], tuple(result["ci95"]), num, point.compute, point.run, point.epoch)


def adaptive_cell(cell: Cell, settings: EMMSettings, cell_folder: Path, log=None) -> EMMEstimate:
    """One cell's EMM by :func:`diffmem.studies.emm.adaptive_search` (sequential: each size follows the last)."""
    return adaptive_search(
        lambda size: measure_size(cell, size, settings, cell_folder), min_size=settings.min_size,
        max_size=settings.max_size, epsilon=settings.epsilon, factor=settings.factor,
        resolution=settings.resolution, max_samples=settings.max_samples,
        remeasure=lambda p, num: remeasure(p, num, cell.data.replace(size=p.size)), log=log)


def finished_sizes(cell_folder: Path) -> list[SizePoint]:
    """The SizePoints of every finished run of an EMM cell (for the table and reports)."""
    folders = sorted(Path(cell_folder).glob("size-*"))
    points = [size_point(f) for f in folders if (f / SUMMARY_FILE).exists()]
    return [p for p in points if p is not None]


def emm_row(cell_folder: Path) -> dict | None:
    path = Path(cell_folder) / EMM_FILE
    if not path.exists():
        return None
    est = json.loads(path.read_text())
    interval = est["interval"] or [None, None]
    return dict(emm=est["emm"], emm_lo=interval[0], emm_hi=interval[1], status=est["status"],
                bracket=" ".join(map(str, est["bracket"] or [])), hypothesis1_violations=len(est["violations"]),
                compute_images=est["compute"], sizes=" ".join(str(p["size"]) for p in est["points"]),
                ratios=" ".join(f"{p['ratio']:.3f}" for p in est["points"]), advice=est["advice"])


# ---------------------------------------------------------------------------------------------
# Jobs (module-level functions: they run in worker processes).


def job_run(cell: Cell, folder: str) -> dict:
    train_run(cell.data, cell.train, Path(folder))
    return run_row(Path(folder))


def job_size(cell: Cell, size: int, settings: EMMSettings, cell_folder: str) -> SizePoint:
    return measure_size(cell, size, settings, Path(cell_folder))


def job_adaptive(cell: Cell, settings: EMMSettings, cell_folder: str, report: bool = False) -> EMMEstimate:
    """One adaptive search; with ``report``, a line on stderr (from the worker) as each size finishes."""
    sizes = Progress(None, enabled=report)
    return adaptive_cell(cell, settings, Path(cell_folder), log=lambda line: sizes.done(f"{cell.name} {line}"))


# ---------------------------------------------------------------------------------------------
# The driver.


@dataclass
class SweepResult:
    out: Path
    rows: list[dict]  # one per finished cell, in the spec's order
    estimates: dict  # cell name -> EMMEstimate (mode "emm")
    by_seed: list[dict] | None = None  # with a train.seed axis: one row per configuration over its seeds


def _jobs(spec: Spec, cells: list[Cell], out: Path, progress: bool = False) -> list[tuple]:
    jobs = []
    for cell in cells:
        folder = str(out / cell.name)
        if spec.mode == "runs":
            jobs.append((cell.name, job_run, (cell, folder)))
        elif spec.emm.strategy == "grid":
            jobs += [(f"{cell.name}/size-{size}", job_size, (cell, size, spec.emm, folder)) for size in spec.emm.sizes]
        else:
            jobs.append((cell.name, job_adaptive, (cell, spec.emm, folder, progress)))
    return jobs


def collect_rows(spec: Spec, cells: list[Cell], out: Path) -> list[dict]:
    """The table, rebuilt from the cell folders (so it never depends on what a killed driver knew)."""
    rows = []
    for cell in cells:
        folder = out / cell.name
        if spec.mode == "runs":
            result = run_row(folder) if (folder / SUMMARY_FILE).exists() else None
        else:
            result = emm_row(folder)
        if result is not None:
            rows.append({"cell": cell.name, **cell.knobs, **result})
    return rows


def seed_rows(spec: Spec, cells: list[Cell], out: Path, rows: list[dict]) -> list[dict] | None:
    """With a training-seed axis, one row per configuration over its seeds (:mod:`diffmem.studies.seeds`);
    else None."""
    from diffmem.studies.seeds import SEED_KNOB, aggregate_emm, aggregate_runs

    knobs = list(cells[0].knobs) if cells else []
    if SEED_KNOB not in knobs:
        return None
    if spec.mode == "runs":
        return aggregate_runs(rows, knobs)
    others = [k for k in knobs if k != SEED_KNOB]
    groups, seed_emms = {}, {}
    for cell in cells:
        key = tuple(cell.knobs.get(k) for k in others)
        points, row = finished_sizes(out / cell.name), emm_row(out / cell.name)
        if points:
            groups.setdefault(key, []).append(points)
        seed_emms.setdefault(key, []).append(row["emm"] if row else None)
    return aggregate_emm(groups, others, spec.emm.epsilon, seed_emms)


def write_tables(spec: Spec, cells: list[Cell], out: Path) -> list[dict]:
    """The per-cell table and, with a seed axis, the per-configuration one; returns the first."""
    rows = collect_rows(spec, cells, out)
    write_table(out, rows)
    by_config = seed_rows(spec, cells, out, rows)
    if by_config is not None:
        write_table(out, by_config, stem=SEEDS_TABLE)
    return rows


def write_table(out: Path, rows: list[dict], stem: str = "results") -> None:
    """``results.csv`` and ``results.json`` (or ``STEM.csv``, ``STEM.json``; strict JSON: missing
    values are null)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    write_text(out / f"{stem}.csv", buffer.getvalue())
    write_json(out / f"{stem}.json", rows, allow_nan=False)


def _csv_value(value):
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "" if value is None else value


def _estimate(spec: Spec, out: Path, cell: Cell, estimate: EMMEstimate | None = None) -> EMMEstimate:
    estimate = estimate or estimate_emm(finished_sizes(out / cell.name), spec.emm.epsilon)
    write_json(out / cell.name / EMM_FILE, estimate.to_dict(), allow_nan=False)
    return estimate


def run_sweep(spec: Spec, out=None, *, engine="local", workers: int = 1, threads: int | None = None,
              address: str | None = None, gpus: float = 0.0, progress: bool = False, log=None) -> SweepResult:
    """Run every cell of ``spec`` into ``out`` (default: a folder named after the spec) on the
    ``local`` pool of ``workers`` processes or on ``ray`` (a name or an
    :class:`~diffmem.studies.engines.Engine`); see the module docstring. With ``progress``, a line
    (through ``log``, default stderr) as each job finishes, with an ETA; the adaptive EMM search
    reports each size from its worker. Every cell, size and option is validated and ``out`` must be
    new, empty or this sweep's folder (:func:`~diffmem.studies.folders.claim_folder`) before
    anything is written."""
    from diffmem.studies.engines import as_engine
    from diffmem.studies.specs import parse_spec

    spec = spec if isinstance(spec, Spec) else parse_spec(spec)
    check_out_path(out)
    engine = as_engine(engine, address=address, gpus=gpus)
    if spec.mode not in ("runs", "emm"):  # the study modes have their own commands
        command = {"twosplit": "two-split"}.get(spec.mode, spec.mode)
        raise InputError(f"{spec.path}: mode {spec.mode} is run by `diffmem {command} SPEC`, not by a sweep")
    check_engine(engine, workers, threads, gpus, progress)
    out = Path(out if out is not None else spec.name)
    cells = check_cells(spec)  # every cell (and EMM size) before the first write
    claim_folder(out, SWEEP_FILE, lambda stored: sweep_difference(stored, spec, cells))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SWEEP_FILE, {"spec": spec.path, "name": spec.name, "mode": spec.mode,
                                  "emm": None if spec.emm is None else vars(spec.emm),
                                  "cells": [c.to_dict() for c in cells]})
    jobs = _jobs(spec, cells, out, progress)
    runner = engine.run(jobs, workers=workers, threads=threads, out=out)
    remaining = {c.name: sum(1 for key, _, _ in jobs if key.split("/")[0] == c.name) for c in cells}
    estimates, by_name = {}, {c.name: c for c in cells}
    report = Progress(len(jobs), enabled=progress, echo=log)
    for key, result in runner:
        name = key.split("/")[0]
        remaining[name] -= 1
        if spec.mode == "emm" and remaining[name] == 0:
            estimates[name] = _estimate(spec, out, by_name[name], result if isinstance(result, EMMEstimate) else None)
        write_tables(spec, cells, out)
        report.done(_job_line(key, result, estimates.get(name) if remaining[name] == 0 else None))
    rows = collect_rows(spec, cells, out)
    return SweepResult(out, rows, estimates, seed_rows(spec, cells, out, rows))


def sweep_difference(stored: dict, spec: Spec, cells: list[Cell]) -> str | None:
    """The first difference between the sweep recorded in ``stored`` (a ``sweep.json``) and this one."""
    if stored["mode"] != spec.mode:
        return f"mode {stored['mode']!r} there, {spec.mode!r} now"
    return spec_difference(stored, spec, cells, {"emm": (EMMSettings, spec.emm)})


def _job_line(key: str, result, estimate: EMMEstimate | None) -> str:
    if isinstance(result, dict):
        ratio = result["max_ratio"]
        text = "no tracking" if ratio is None else f"max ratio {ratio:.3f} [{result['ci_lo']:.3f}, {result['ci_hi']:.3f}]"
        return f"{key}: {text}, final loss {result['final_loss']:.4g}, {result['wall_time_s']} s"
    line = key
    if isinstance(result, SizePoint):
        line = f"{key}: ratio {result.ratio:.3f} [{result.ci95[0]:.3f}, {result.ci95[1]:.3f}]"
    if estimate is not None:
        line += f" — {key.split('/')[0]}: {estimate.advice}"
    return line


def emm(spec=None, out=None, *, data: DataSpec | None = None, train: TrainConfig | None = None,
        settings: EMMSettings | None = None, **engine) -> EMMEstimate:
    """EMM_ε of one configuration: ``spec`` a spec file (or :class:`~diffmem.studies.specs.Spec`) in mode
    emm, or the three parts ``data``, ``train``, ``settings``. Runs go to ``out``; ``engine``
    keywords as :func:`run_sweep`. Returns the estimate (also in ``OUT/base/emm.json``)."""
    from diffmem.studies.specs import parse_spec

    if spec is None:
        if data is None or train is None or settings is None:
            raise InputError("give a spec, or data, train and settings", param="spec")
        for name, value, cls in (("data", data, DataSpec), ("train", train, TrainConfig), ("settings", settings, EMMSettings)):
            if not isinstance(value, cls):
                raise InputError(f"expected a {cls.__name__}, got {type(value).__name__}", param=name)
        spec = Spec("<python>", "emm", "emm", "product", data.to_dict(), train.to_dict(), {}, settings)
        spec.cells()
    elif not isinstance(spec, Spec):
        spec = parse_spec(spec, mode="emm")
    check_one_configuration(spec)
    result = run_sweep(spec, out, **engine)
    return result.estimates[spec.cells()[0].name]


def check_one_configuration(spec: Spec) -> Spec:
    """An EMM spec: mode emm and no axes."""
    if spec.mode != "emm" or spec.axes:
        raise InputError(f"{spec.path}: diffmem emm takes one configuration (mode emm, no [axes]); "
                         "use diffmem sweep for several", param="spec")
    return spec


def run(spec, out=None, *, engine="local", workers: int = 1, threads: int | None = None, log=None,
        progress: bool = False):
    """The study entry shape (:class:`~diffmem.studies.result.StudyResult`): a sweep, or one EMM when
    ``spec`` (a path or a parsed spec) is in mode emm without axes."""
    from diffmem.studies.result import StudyResult
    from diffmem.studies.specs import parse_spec

    spec = spec if isinstance(spec, Spec) else parse_spec(spec)
    options = dict(engine=engine, workers=workers, threads=threads, log=log, progress=progress)
    if spec.mode == "emm" and not spec.axes:
        estimate = emm(spec, out, **options)
        folder = Path(out if out is not None else spec.name)
        lines = [f"|D| = {p.size:>6}: ratio {p.ratio:.3f} [{p.ci95[0]:.3f}, {p.ci95[1]:.3f}] (epoch {p.epoch:g})"
                 for p in estimate.points]
        return StudyResult("emm", folder, collect_rows(spec, spec.cells(), folder), [*lines, estimate.advice], estimate)
    result = run_sweep(spec, out, **options)
    return StudyResult("sweep", result.out, result.rows,
                       [f"{len(result.rows)} cells finished; table in {result.out / TABLE_CSV}"], result)
