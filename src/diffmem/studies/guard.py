"""The memorization guard: stop training once memorization starts, and pick the snapshot to ship.

Seed 003 (Bonnaire et al. 2025) finds a window of training times ``[τ_gen, τ_mem]`` in which a
diffusion model already generates good samples but does not copy its training set yet, and the
window grows with n. Two controls act on it:

- ``TrainConfig(guard=F, track_every=K)`` (``diffmem train --guard F``): at every tracked measurement
  the EMA net is also saved as a snapshot; once the tracked memorization ratio exceeds ``F`` the
  loop stops cleanly (snapshot and state saved), ``RUN/guard.json`` says why and when, and the
  summary carries it as ``stopped``. A resumed stopped run trains no further. That per-step check
  is :func:`diffmem.tracking.guard_check`, beside the measurement it reads: the loop knows no study.
- :func:`select_snapshot` (``diffmem select RUN --max-memorization F``): measure every snapshot of a
  run (f_mem with its CI and the FD to held-out images, :func:`diffmem.studies.timescales.measure_run`,
  cached in ``RUN/timescales.json``) and pick the one with the best (lowest) FD among those with
  ``f_mem ≤ F``, printed as one line a practitioner can act on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diffmem.errors import InputError, check_number

# ---------------------------------------------------------------------------------------------
# After training: which snapshot to use.


@dataclass
class Selection:
    """The chosen snapshot (None when no snapshot qualifies) and the one-line answer."""

    run: str
    max_memorization: float
    snapshot: str | None
    epoch: int | None
    step: int | None
    f_mem: float | None
    ci95: list | None
    fd: float | None
    answer: str
    points: list = field(default_factory=list)  # every snapshot's measurement, in step order

    def to_dict(self) -> dict:
        return asdict(self)


def choose(points: list[dict], max_memorization: float) -> dict | None:
    """The point with the lowest FD among those with ``f_mem ≤ max_memorization`` (ties: the
    earliest); None when none qualifies."""
    eligible = [p for p in sorted(points, key=lambda p: p["step"]) if p["f_mem"] <= max_memorization]
    return min(eligible, key=lambda p: p["fd"]) if eligible else None


def answer_line(run: str, points: list[dict], best: dict | None, max_memorization: float) -> str:
    """One line: the snapshot to use, its f_mem (CI) and FD, and where memorization starts."""
    from diffmem.runs import snapshot_name
    from diffmem.studies.timescales import tau_mem

    steps = [p["step"] for p in points]
    onset = tau_mem([p["epoch"] or 1 for p in points], [p["f_mem"] for p in points], max_memorization) \
        if len(set(steps)) == len(steps) and all(p["epoch"] for p in points) else None
    where = f"; f_mem first exceeds {max_memorization:g} near epoch {onset:.0f}" if onset is not None else \
        f"; no snapshot exceeds {max_memorization:g}"
    if best is None:
        low = min(points, key=lambda p: p["f_mem"])
        return (f"no snapshot of {run} has f_mem ≤ {max_memorization:g} (lowest {low['f_mem']:.3f} at epoch "
                f"{low['epoch']}): train for fewer steps, on more images, or with --guard")
    eligible = sum(p["f_mem"] <= max_memorization for p in points)
    return (f"use {Path(run) / snapshot_name(best['epoch'])} (epoch {best['epoch']}, step {best['step']}): f_mem "
            f"{best['f_mem']:.3f} [{best['ci95'][0]:.3f}, {best['ci95'][1]:.3f}] ≤ {max_memorization:g}, FD "
            f"{best['fd']:.4g}, the best of {eligible} of {len(points)} snapshots within the limit{where}")


def select_snapshot(run, max_memorization: float, *, heldout=None, train=None, features: str = "classifier",
                    samples: int = 200, num_heldout: int = 500, bootstrap: int = 1000, device: str = "cpu",
                    source: str | None = None, log=None) -> Selection:
    """Measure every snapshot of ``run`` and choose the best-quality one with ``f_mem ≤
    max_memorization`` (:func:`choose`). The training set and held-out images come from the run's
    data recipe (``RUN/data.json``, as sweeps write it) unless ``train`` / ``heldout`` (ImageSets or
    paths) are given. ``source`` names the built-in source of the classifier features when there is no
    data recipe (``digits``, ``mnist``, ``fashion-mnist``). Measurements are cached in
    ``RUN/timescales.json``."""
    from diffmem.runs import list_snapshots, read_record
    from diffmem.studies.timescales import TimescaleSettings, measure_run

    max_memorization = check_number("max_memorization", max_memorization, lo=0, hi=1)
    if run is None or not str(run).strip() or not Path(run).is_dir():
        raise InputError(f"RUN {run!r}: no such run folder")
    read_record(Path(run), param=None)
    if not list_snapshots(Path(run)):
        raise InputError(f"RUN {run}: the run folder holds no snapshot-epoch*.safetensors")
    try:
        settings = TimescaleSettings(samples=samples, heldout=num_heldout, features=features, bootstrap=bootstrap)
    except InputError as err:
        raise InputError(err.detail, param={"heldout": "num_heldout"}.get(err.param, err.param)) from None
    train_set, heldout_set_, recipe_source = _sets(Path(run), train, heldout, settings)
    source = source or recipe_source
    if settings.features == "classifier" and source is None:
        raise InputError("the classifier features need the run's built-in source, which is unknown here; "
                         "give it (--source digits|mnist|fashion-mnist) or use pixels, pca:K or a TorchScript "
                         "file", param="features")
    points = measure_run(run, train_set, heldout_set_, settings, source=source, device=device, log=log)
    best = choose(points, max_memorization)
    pick = best or {}
    return Selection(str(run), max_memorization, str(Path(run) / _name(best)) if best else None, pick.get("epoch"),
                     pick.get("step"), pick.get("f_mem"), pick.get("ci95"), pick.get("fd"),
                     answer_line(str(run), points, best, max_memorization), points)


def _name(point: dict) -> str:
    from diffmem.runs import snapshot_name

    return snapshot_name(point["epoch"])


def _sets(run: Path, train, heldout, settings) -> tuple:
    """(training set, held-out set, built-in source or None) of a run."""
    from diffmem.data.io import load_image_set
    from diffmem.data.spec import DataSpec, heldout_set, make_dataset

    recipe = run / "data.json"
    spec = DataSpec(**json.loads(recipe.read_text())) if recipe.exists() else None
    if train is None:
        if spec is None:
            raise InputError(f"{run}: no data.json with the run's data recipe; give the training set", param="train")
        train = make_dataset(spec)
    elif not hasattr(train, "images"):
        train = load_image_set(train, what="train")
    if heldout is None:
        if spec is None:
            raise InputError(f"{run}: no data.json to draw held-out images from; give them", param="heldout")
        heldout = heldout_set(spec, settings.heldout)
    elif not hasattr(heldout, "images"):
        heldout = load_image_set(heldout, what="heldout")
    return train, heldout, spec.source if spec is not None else None
