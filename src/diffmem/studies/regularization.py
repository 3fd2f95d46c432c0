"""Regularized optima (Baptista et al. 2025, seed 002): how much the closed-form optimum copies as
the Tikhonov strength ``c`` or the empirical-Bayes floor ``τ`` grows.

For a training set ``{y_i}`` and ``x̄_w(x; σ) = Σ_i softmax_i(-‖x - y_i‖²/2σ²)·y_i`` (the optimum
``D*``), :class:`~diffmem.denoisers.optimal.OptimalDenoiser` evaluates

* Tikhonov:  ``D_c(x; σ) = (c·x + σ²·x̄_w) / (σ² + c)``  (``c = 0``: ``D*``), the strength ``c``
  constant (``tikhonov``) or ``c·g(t)² = 2cσ`` on EDM's schedule (``tikhonov_time``, the authors'
  strength that grows with the noise; derivation in :mod:`diffmem.denoisers.optimal`);
* EB floor:  ``D_τ(x; σ) = (1 - W)·x + W·x̄_w``, ``W = S / max(S, τ)``,
  ``S = Σ_j exp(-‖x - y_j‖²/2σ²)`` (unnormalized kernels, as the authors: ``S ≤ n`` at every σ;
  ``τ → 0``: ``D*``).

For each strength this module samples the regularized optimum with EDM's sampler and measures the
samples (:func:`~diffmem.metrics.proximity.proximity`): the share within ``tolerance`` of a
training sample (seed 002's measure), the 1/3-ratio share (seed 001's), the share farther from
every training sample than the training set's diameter (never denoised), and the rest, the new
samples (``fraction_new = 1 - within - never denoised``: seed 002's three shares). It is the spec mode
``regularization``::

    name = "regularization-toy"
    mode = "regularization"
    [data]                          # any DataSpec: toy2d, gaussian-mixture:K (with dim), digits, ...
    source = "toy2d"
    size = 20
    [axes]                          # optional: data fields only (e.g. dim = [8, 16, 32])
    [regularization]
    tikhonov = [0.0, 0.01, 0.1, 1.0]  # constant strengths c (≥ 0)
    tikhonov_time = [0.01, 0.1]       # strengths c of c·g(t)² (≥ 0)
    eb = [0.01, 0.1, 1.0, 10.0]       # floors τ (> 0; the authors' range 1e-2 ... 10) ...
    log_eb = [-30.0]                  # ... or ln τ
    num = 1000                        # samples per strength; tolerance, threshold, sampler, steps,
                                      # seed, bootstrap, quantize (images: round to uint8 first)

run by ``diffmem regularization SPEC [--out DIR]``. Output: ``OUT/<cell>/regularization.json``
(rows, resumable: a finished cell is read back), ``OUT/results.csv|json`` (one row per cell and
strength), ``OUT/<kind>.png`` per regularizer used (``tikhonov``, ``tikhonov_time``, ``eb``: the
shares against the strength), and for 2-D
points ``OUT/<cell>/samples.png`` (training points and samples per strength).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.spatial.distance import pdist

from diffmem.atomic import prepare_output, write_json
from diffmem.data.imageset import to_uint8
from diffmem.data.points import PointCloud
from diffmem.data.spec import make_dataset
from diffmem.denoisers.optimal import OptimalDenoiser
from diffmem.errors import InputError, check_number
from diffmem.studies.folders import claim_folder
from diffmem.metrics.memorization import DEFAULT_THRESHOLD
from diffmem.metrics.proximity import DEFAULT_TOLERANCE, proximity
from diffmem.plots import save_curves, save_figure
from diffmem.rng import check_seed
from diffmem.sampling import SAMPLERS, sample
from diffmem.studies.specs import Cell, Spec, check_cells, mode_settings
from diffmem.studies.sweep import write_table

MODE = "regularization"
CELL_FILE = "regularization.json"


@dataclass(frozen=True)
class RegularizationSettings:
    """The ``[regularization]`` table: strengths and how each regularized optimum is measured."""

    tikhonov: tuple[float, ...] = ()  # constant Tikhonov strengths c ≥ 0 (data units squared, like σ²)
    tikhonov_time: tuple[float, ...] = ()  # Tikhonov in time: strength c·g(t)² = 2cσ (c in data units)
    eb: tuple[float, ...] = ()  # EB floors τ > 0 (on the unnormalized kernel sum, ≤ n)
    log_eb: tuple[float, ...] = ()  # EB floors given as ln τ
    num: int = 1000  # samples per strength
    tolerance: float = DEFAULT_TOLERANCE  # "within a tolerance": d1 ≤ tolerance, in data units
    threshold: float = DEFAULT_THRESHOLD  # the ratio rule d1 < threshold · d2
    sampler: str = "heun"
    steps: int = 18
    seed: int = 0
    bootstrap: int = 1000
    quantize: bool = True  # image sets: round samples to uint8 (as PNGs) before measuring; points never

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name, lo, lo_open in (("tikhonov", 0, False), ("tikhonov_time", 0, False), ("eb", 0, True),
                                  ("log_eb", None, False)):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)):
                raise InputError(f"must be a list of numbers, got {values!r}", param=name)
            fix(name, tuple(float(check_number(name, v, lo=lo, lo_open=lo_open)) for v in values))
        if not (self.tikhonov or self.tikhonov_time or self.eb or self.log_eb):
            raise InputError("give at least one strength (tikhonov, tikhonov_time, eb or log_eb)", param="tikhonov")
        fix("num", check_number("num", self.num, lo=1, hi=10**7, integer=True))
        fix("tolerance", check_number("tolerance", self.tolerance, lo=0, lo_open=True))
        fix("threshold", check_number("threshold", self.threshold, lo=0, lo_open=True, hi=1))
        if self.sampler not in SAMPLERS:
            raise InputError(f"expected one of {', '.join(SAMPLERS)}, got {self.sampler!r}", param="sampler")
        fix("steps", check_number("steps", self.steps, lo=1, hi=100_000, integer=True))
        fix("seed", check_seed(self.seed))
        fix("bootstrap", check_number("bootstrap", self.bootstrap, lo=0, hi=10**7, integer=True))
        if not isinstance(self.quantize, bool):
            raise InputError(f"must be true or false, got {self.quantize!r}", param="quantize")

    def strengths(self) -> list[tuple[str, float, float]]:
        """``(kind, strength, ln strength)`` for every strength (ln of 0 is -inf)."""
        rows = [(kind, c, math.log(c) if c > 0 else -math.inf)
                for kind in ("tikhonov", "tikhonov_time") for c in getattr(self, kind)]
        rows += [("eb", tau, math.log(tau)) for tau in self.eb]
        return rows + [("eb", math.exp(log_tau), log_tau) for log_tau in self.log_eb]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def parse_settings(spec: Spec) -> RegularizationSettings:
    """The spec's ``[regularization]`` table, validated; errors name the file, table and key."""
    bad_axes = [k for k in spec.axes if not k.startswith("data.")]
    if bad_axes:
        raise InputError(f"{spec.path}: [axes] {bad_axes[0].split('.', 1)[1]}: mode {MODE} samples closed-form "
                         f"optima; only data fields can be axes")
    return mode_settings(spec, RegularizationSettings)


def measure_strength(train, kind: str, strength: float, settings: RegularizationSettings,
                     device: str = "cpu", log_strength: float | None = None,
                     diameter: float | None = None) -> tuple[dict, np.ndarray]:
    """Sample the optimum of ``train`` (PointCloud or ImageSet) regularized by ``(kind, strength)``
    and measure the samples. Returns the row (``kind``, ``strength``, ``log_strength`` and
    :meth:`~diffmem.metrics.proximity.ProximityResult.summary`) and the samples, float32 (num, ...).
    ``diameter``: the training set's (:func:`diameter_of`), when the caller measures several strengths."""
    points = isinstance(train, PointCloud)
    y = train.to_model()
    if log_strength is None or not math.isfinite(log_strength):
        log_strength = math.log(strength) if strength > 0 else None
    regularize = ("log_eb", log_strength) if kind == "eb" else (kind, strength)  # ln τ: no underflow
    D = OptimalDenoiser(y, regularize=regularize, device=device)
    x = sample(D, settings.num, sampler=settings.sampler, steps=settings.steps, seed=settings.seed,
               device=device).numpy()
    if settings.quantize and not points:  # as saved PNGs: back to model space after rounding
        x = to_uint8(x).astype(np.float32) / 127.5 - 1.0
    near = proximity(y, x, tolerance=settings.tolerance, threshold=settings.threshold,
                     bootstrap=settings.bootstrap, seed=settings.seed, device=device)
    # Samples farther from every training sample than the set's diameter were never denoised
    # (a strong EB floor leaves them at the σ_max scale): neither copies nor new data.
    diameter = diameter_of(y) if diameter is None else diameter
    undenoised = float(np.mean(near.d1 > diameter))
    new = float(np.mean((near.d1 > settings.tolerance) & (near.d1 <= diameter)))  # 1 - within - undenoised
    return {"kind": kind, "strength": strength, "log_strength": log_strength, **near.summary(),
            "fraction_beyond_diameter": undenoised, "fraction_new": new}, x


def diameter_of(y: np.ndarray) -> float:
    """The largest distance between two training samples (model space), an O(n² d) pass."""
    return float(pdist(y.reshape(len(y), -1).astype(np.float64)).max())


def run_cell(cell: Cell, settings: RegularizationSettings, folder: Path, device: str = "cpu", log=None) -> list[dict]:
    """Every strength on the cell's training set, into ``folder``; a finished cell (same settings
    and data recipe) is read back instead. Returns its rows."""
    record = {"settings": settings.to_dict(), "data": cell.data.to_dict()}
    path = Path(folder) / CELL_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if {k: stored.get(k) for k in record} == record:
            return stored["rows"]
        raise InputError(f"{path}: finished with other settings or data than the spec now gives; "
                         f"use a new output folder or restore the spec")
    train = make_dataset(cell.data)
    rows, samples = [], []
    diameter = diameter_of(train.to_model())
    for kind, strength, log_strength in settings.strengths():
        row, x = measure_strength(train, kind, strength, settings, device, log_strength, diameter)
        rows.append({"cell": cell.name, **cell.knobs, **row})
        samples.append((kind, strength, x))
        if log is not None:
            log(f"{cell.name} {kind} {strength:.4g}: within {row['fraction_within']:.3f}, "
                f"new {row['fraction_new']:.3f}, never denoised {row['fraction_beyond_diameter']:.3f}, "
                f"ratio {row['memorization_ratio']:.3f}")
    Path(folder).mkdir(parents=True, exist_ok=True)
    if isinstance(train, PointCloud) and train.dim == 2:
        save_figure(scatter_figure(train.points, samples), Path(folder) / "samples.png")
    write_json(path, {**record, "rows": rows}, allow_nan=False)
    return rows


def run_regularization(spec: Spec, out=None, *, device: str = "cpu", log=None, engine="local", workers: int = 1,
                       threads: int | None = None, progress: bool = False) -> list[dict]:
    """Run a ``mode = "regularization"`` spec (module docstring) into ``out`` (default: a folder
    named after the spec), its cells on ``engine``; returns the table's rows."""
    from diffmem.studies.engines import as_engine

    if spec.mode != MODE:
        raise InputError(f"{spec.path}: mode: diffmem regularization runs mode {MODE!r}, got {spec.mode!r}")
    settings = parse_settings(spec)
    cells = check_cells(spec)  # every cell's data, before the first write
    record = {"name": spec.name, "settings": settings.to_dict()}
    out = claim_folder(spec.name if out is None else out, "spec.json",
                       lambda stored: next((f"{k} differs" for k in record if stored.get(k) != record[k]), None),
                       legacy={c.name for c in cells} | {"results.csv", "results.json", "tikhonov.png", "eb.png"})
    out = prepare_output(out, kind="folder", overwrite=True)
    engine = as_engine(engine)
    here = engine.kind == "local" and workers == 1  # the per-strength lines need the cells in this process
    if here and threads is None:  # in this process, as before engines: its own thread count
        import torch

        threads = torch.get_num_threads()
    jobs = [(c.name, run_cell, (c, settings, out / c.name, device, log if here else None)) for c in cells]
    done = dict(engine.run(jobs, workers=workers, threads=threads, out=out, progress=progress))
    rows = [row for c in cells for row in done[c.name]]
    write_table(out, rows)
    write_json(out / "spec.json", {"spec": spec.path, **record})
    for kind in ("tikhonov", "tikhonov_time", "eb"):
        if any(r["kind"] == kind for r in rows):
            save_strength_curves(out / f"{kind}.png", rows, kind, settings)
    return rows


def save_strength_curves(path: Path, rows: list[dict], kind: str, settings: RegularizationSettings) -> Path:
    """Seed 002's three shares (within the tolerance, new, never denoised) and the 1/3 ratio against
    the strength (log axis; symlog when it includes 0), one set of lines per cell."""
    series = {}
    for cell in dict.fromkeys(r["cell"] for r in rows if r["kind"] == kind):
        mine = [r for r in rows if r["kind"] == kind and r["cell"] == cell]
        x = [r["strength"] for r in mine]
        prefix = "" if cell == "base" else f"{cell}: "
        series[f"{prefix}within {settings.tolerance:g}"] = (x, [r["fraction_within"] for r in mine])
        series[f"{prefix}new"] = (x, [r["fraction_new"] for r in mine])
        series[f"{prefix}never denoised"] = (x, [r["fraction_beyond_diameter"] for r in mine])
        series[f"{prefix}ratio < {settings.threshold:.3g}"] = (x, [r["memorization_ratio"] for r in mine])
    xlabel = {"eb": "EB floor τ"}.get(kind, f"{kind} c")
    return save_curves(path, series, xlabel=xlabel, ylabel="share of samples", logx=True,
                       title=f"regularized optimum: {kind}")


def scatter_figure(train: np.ndarray, samples: list[tuple[str, float, np.ndarray]]) -> Figure:
    """2-D points: one panel per strength, training points (black) and samples (blue)."""
    cols = min(len(samples), 4)
    rows = math.ceil(len(samples) / cols)
    fig = Figure(figsize=(2.4 * cols, 2.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (kind, strength, x) in zip(axes, samples):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, color="tab:blue")
        ax.scatter(train[:, 0], train[:, 1], s=10, color="black", marker="x")
        ax.set_title(f"{kind} {strength:.3g}", fontsize=8)
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.tick_params(labelsize=6)
    for ax in axes[len(samples):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def run(spec, out=None, *, engine="local", workers: int = 1, threads: int | None = None, log=None,
        progress: bool = False, device: str = "cpu"):
    """The study entry shape (:class:`~diffmem.studies.result.StudyResult`) over
    :func:`run_regularization` (``spec`` a path or a parsed spec)."""
    from diffmem.studies.result import StudyResult
    from diffmem.studies.specs import parse_spec

    spec = spec if isinstance(spec, Spec) else parse_spec(spec)
    rows = run_regularization(spec, out, device=device, log=log, engine=engine, workers=workers, threads=threads,
                              progress=progress)
    folder = Path(spec.name if out is None else out)
    return StudyResult("regularization", folder, rows,
                       [f"{len(rows)} strengths measured; table in {out or spec.name}/results.csv"], rows)
