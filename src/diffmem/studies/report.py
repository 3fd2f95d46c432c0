"""``diffmem report DIR``: figures in the seed's forms and one self-contained HTML page, for a run
folder, an EMM folder or a sweep folder.

- a run: the memorization ratio vs epoch (95 % CI band), the loss, and a nearest-neighbour grid of
  samples from its most-memorizing snapshot;
- an EMM: the ratio vs |D| with the 1 - ε line and the EMM with its interval, the ratio vs epoch of
  every size, and the nearest-neighbour grid at the largest memorized size;
- a sweep: per cell the same, plus (mode emm) EMM vs the factor's value with intervals, (mode runs)
  the highest ratio vs the factor's value; and the results table.

Everything goes to ``DIR/report/`` (PNG files and ``index.html``, whose figures are embedded, so the
page alone is the report). A report folder is replaced only by another report.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from diffmem.atomic import prepare_output, write_text
from diffmem.errors import InputError
from diffmem.pages import MARKER, Report, render_html
from diffmem.plots import save_figure

GRID_SAMPLES = 64


# ---------------------------------------------------------------------------------------------
# Figures.


def _ratio_axes(fig: Figure, xlabel: str, logx: bool = False):
    ax = fig.subplots()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("memorization ratio")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if logx:
        ax.set_xscale("log")
    return ax


def ratio_vs_epoch(runs: dict[str, dict]) -> Figure:
    """``{label: summary}``: each run's tracked ratio vs epoch with its 95 % CI band."""
    fig = Figure(figsize=(5.2, 3.4))
    ax = _ratio_axes(fig, "epoch")
    for label, summary in runs.items():
        curve = summary["memorization_curve"]
        x = [r["epoch"] for r in curve]
        ax.plot(x, [r["ratio"] for r in curve], "o-", ms=3, label=label)
        ax.fill_between(x, [r["ci95"][0] for r in curve], [r["ci95"][1] for r in curve], alpha=0.15)
    if len(runs) > 1:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def ratio_vs_size(estimates: dict[str, dict]) -> Figure:
    """``{label: emm.json}``: ratio vs |D| (CIs as error bars), the 1 - ε line, EMM markers."""
    fig = Figure(figsize=(5.2, 3.4))
    ax = _ratio_axes(fig, "training-set size |D|", logx=True)
    thr = None
    for label, est in estimates.items():
        pts = est["points"]
        sizes, ratios = [p["size"] for p in pts], [p["ratio"] for p in pts]
        err = [[r - p["ci95"][0] for r, p in zip(ratios, pts)], [p["ci95"][1] - r for r, p in zip(ratios, pts)]]
        line = ax.errorbar(sizes, ratios, yerr=err, fmt="o-", ms=3.5, capsize=2, label=label)[0]
        thr = est["threshold"]
        if est["emm"] is not None:
            lo, hi = (v if v is not None else math.nan for v in est["interval"])
            ax.axvline(est["emm"], color=line.get_color(), ls=":", lw=1)
            if math.isfinite(lo) and math.isfinite(hi):
                ax.axvspan(lo, hi, color=line.get_color(), alpha=0.08)
            ax.plot([est["emm"]], [thr], "D", color=line.get_color(), ms=6)
    if thr is not None:
        ax.axhline(thr, color="k", ls="--", lw=0.8, label=f"1 - ε = {thr:g}")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def value_plot(xs: list, ys: list, lo: list | None, hi: list | None, *, xlabel: str, ylabel: str) -> Figure:
    """A quantity (EMM, highest ratio) vs a factor's value, with intervals; categorical x if needed."""
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.subplots()
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    pos = xs if numeric else list(range(len(xs)))
    ok = [i for i, y in enumerate(ys) if y is not None]
    if lo is not None and hi is not None:
        ax.errorbar([pos[i] for i in ok], [ys[i] for i in ok], capsize=3, fmt="o-",
                    yerr=[[ys[i] - (lo[i] if lo[i] is not None else ys[i]) for i in ok],
                          [(hi[i] if hi[i] is not None else ys[i]) - ys[i] for i in ok]])
    else:
        ax.plot([pos[i] for i in ok], [ys[i] for i in ok], "o-")
    if not numeric:
        ax.set_xticks(pos, [str(x) for x in xs], rotation=30, fontsize=7)
    else:
        positive = [x for x in xs if x > 0]
        if positive and max(positive) / min(positive) > 20:  # decades apart: log (symlog keeps a 0)
            ax.set_xscale("log") if min(xs) > 0 else ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def neighbor_grid_of_run(folder: Path, out: Path, epoch: float | None = None) -> Path | None:
    """Samples of the run's snapshot at ``epoch`` (default: its latest) beside their nearest
    training images; None when the training set cannot be rebuilt from the run folder."""
    from diffmem.data.imageset import to_uint8
    from diffmem.metrics.memorization import memorization
    from diffmem.plots import save_neighbor_grid
    from diffmem.runs import list_snapshots, load_run, snapshot_name
    from diffmem.sampling import sample

    data = run_dataset(folder)
    snaps = dict(list_snapshots(folder))
    if data is None or not snaps:
        return None
    path = folder / snapshot_name(int(epoch)) if epoch is not None and int(epoch) in snaps else snaps[max(snaps)]
    loaded = load_run(path)
    labels = data.labels[np.arange(GRID_SAMPLES) % len(data)] if loaded.denoiser.num_classes else None
    images = to_uint8(sample(loaded.denoiser, GRID_SAMPLES, labels=labels, seed=0).numpy())
    result = memorization(data, images)
    return save_neighbor_grid(out, images, data.images, result, rows=4)


def run_dataset(folder: Path):
    """The training set of a run: from ``data.json`` (runs made by sweeps) or the recorded path."""
    from diffmem.data.io import load_image_set
    from diffmem.data.spec import DataSpec, make_dataset

    spec = Path(folder) / "data.json"
    if spec.exists():
        return make_dataset(DataSpec(**json.loads(spec.read_text())))
    recorded = json.loads((Path(folder) / "config.json").read_text()).get("data")
    if recorded and Path(recorded).exists():
        return load_image_set(recorded)
    return None


# ---------------------------------------------------------------------------------------------
# Reports of each kind of folder.


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _add(report: Report, out: Path, name: str, caption: str, fig: Figure | None) -> None:
    if fig is not None:
        report.figures.append((caption, save_figure(fig, out / name)))


def run_report(folder: Path, out: Path) -> Report:
    summary = _summary(folder)
    report = Report(f"Run {folder.name}")
    best = summary["max_memorization_ratio"]
    report.lines.append(f"{summary['steps']} steps ({summary['epochs']:g} epochs) on {summary['num_images']} images, "
                        f"{summary['parameters']} parameters; final loss {summary['final_loss']:.4g}.")
    if best is not None:
        report.lines.append(f"Highest memorization ratio {best:.3f} at epoch {summary['max_memorization_epoch']}.")
        _add(report, out, "ratio_vs_epoch.png", "Memorization ratio vs epoch (95 % CI)",
             ratio_vs_epoch({folder.name: summary}))
    grid = neighbor_grid_of_run(folder, out / "neighbors.png", summary["max_memorization_epoch"])
    if grid is not None:
        report.figures.append(("Generated samples beside their nearest training images", grid))
    report.table = [{"epoch": r["epoch"], "ratio": r["ratio"], "ci_lo": r["ci95"][0], "ci_hi": r["ci95"][1]}
                    for r in summary["memorization_curve"]]
    return report


def _largest_memorized(est: dict) -> dict | None:
    above = [p for p in est["points"] if p["ratio"] >= est["threshold"]]
    return above[-1] if above else (max(est["points"], key=lambda p: p["ratio"]) if est["points"] else None)


def emm_report(folder: Path, out: Path, label: str | None = None, report: Report | None = None) -> Report:
    est = json.loads((folder / "emm.json").read_text())
    report = report or Report(f"EMM {folder.name}")
    tag = label or folder.name
    report.lines.append(f"{tag}: {est['advice']}")
    _add(report, out, f"{tag}-ratio_vs_size.png", f"{tag}: memorization ratio vs |D|", ratio_vs_size({tag: est}))
    runs = {f"|D|={p['size']}": _summary(Path(p["run"])) for p in est["points"] if p.get("run")}
    if runs:
        _add(report, out, f"{tag}-ratio_vs_epoch.png", f"{tag}: ratio vs epoch at each |D|", ratio_vs_epoch(runs))
    pick = _largest_memorized(est)
    if pick is not None and pick.get("run"):
        grid = neighbor_grid_of_run(Path(pick["run"]), out / f"{tag}-neighbors.png", pick.get("epoch"))
        if grid is not None:
            report.figures.append((f"{tag}: samples at |D| = {pick['size']} beside their nearest training images", grid))
    report.table += [{"cell": tag, "size": p["size"], "ratio": p["ratio"], "ci_lo": p["ci95"][0],
                      "ci_hi": p["ci95"][1], "epoch": p.get("epoch")} for p in est["points"]]
    return report


def sweep_report(folder: Path, out: Path) -> Report:
    sweep = json.loads((folder / "sweep.json").read_text())
    rows = json.loads((folder / "results.json").read_text()) if (folder / "results.json").exists() else []
    report = Report(f"Sweep {sweep['name']} ({sweep['mode']})", table=rows)
    cells = [c for c in sweep["cells"] if (folder / c["name"]).is_dir()]
    knobs = list(cells[0]["knobs"]) if cells else []
    if (folder / "seeds.json").exists():  # intervals with the training-seed spread beside the sampling CIs
        _seeds_section(report, out, json.loads((folder / "seeds.json").read_text()), sweep["mode"], knobs)
    if sweep["mode"] == "emm":
        estimates = {c["name"]: json.loads((folder / c["name"] / "emm.json").read_text())
                     for c in cells if (folder / c["name"] / "emm.json").exists()}
        if estimates:
            _add(report, out, "ratio_vs_size.png", "Memorization ratio vs |D| per factor value", ratio_vs_size(estimates))
        for c in cells[:8]:
            if c["name"] in estimates:
                emm_report(folder / c["name"], out, c["name"], report)
        if len(knobs) == 1 and estimates:
            xs = [c["knobs"][knobs[0]] for c in cells if c["name"] in estimates]
            ests = [estimates[c["name"]] for c in cells if c["name"] in estimates]
            _add(report, out, "emm_vs_factor.png", f"EMM vs {knobs[0]} (95 % interval)", value_plot(
                xs, [e["emm"] for e in ests], [(e["interval"] or [None, None])[0] for e in ests],
                [(e["interval"] or [None, None])[1] for e in ests], xlabel=knobs[0], ylabel="EMM (|D|)"))
    else:
        runs = {c["name"]: _summary(folder / c["name"]) for c in cells if (folder / c["name"] / "summary.json").exists()}
        if any(s["memorization_curve"] for s in runs.values()):
            _add(report, out, "ratio_vs_epoch.png", "Memorization ratio vs epoch per cell", ratio_vs_epoch(runs))
        if len(knobs) == 1 and rows:
            _add(report, out, "max_ratio_vs_factor.png", f"Highest ratio vs {knobs[0]} (95 % CI)", value_plot(
                [r[knobs[0]] for r in rows], [r["max_ratio"] for r in rows], [r["ci_lo"] for r in rows],
                [r["ci_hi"] for r in rows], xlabel=knobs[0], ylabel="highest memorization ratio"))
    return report


def _seeds_section(report: Report, out: Path, rows: list[dict], mode: str, knobs: list[str]) -> None:
    """The table over training seeds and, with one factor besides the seed, its value vs the factor."""
    report.tables.append(("Over training seeds (ci_lo/ci_hi: Student-t 95 % interval over seeds; "
                          "sampling_ci_width: mean bootstrap CI of one run)", rows))
    factors = [k for k in knobs if k != "seed"]
    if len(factors) != 1 or not rows:
        return
    key, (value, lo, hi) = factors[0], (("emm", "emm_lo", "emm_hi") if mode == "emm" else ("max_ratio", "ci_lo", "ci_hi"))
    _add(report, out, "seeds_vs_factor.png", f"{value} vs {key}, mean over training seeds (95 % interval over seeds)",
         value_plot([r[key] for r in rows], [r[value] for r in rows], [r[lo] for r in rows], [r[hi] for r in rows],
                    xlabel=key, ylabel="EMM (|D|)" if mode == "emm" else "highest memorization ratio"))


# ---------------------------------------------------------------------------------------------
# The page.


def study_report(folder: Path, out: Path) -> Report:
    """The output folder of a study command (``timescales``, ``two-split``, ``random-features``,
    ``regularization``): its figures, and each of its CSV tables of at most ``STUDY_ROWS`` rows."""
    import csv

    report = Report(f"{folder.name}")
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) <= STUDY_ROWS:
            report.tables.append((path.name, rows))
        else:
            report.lines.append(f"{path.name}: {len(rows)} rows (not shown).")
    report.figures = [(png.stem.replace("_", " "), png) for png in sorted(folder.glob("*.png"))]
    return report


STUDY_ROWS = 200  # longer tables (e.g. per-step curves) stay in their CSV files


def factors_report(folder: Path, out: Path) -> Report:
    """A folder of sweeps (a factor study, :mod:`diffmem.studies.factors`): the summary figure and table;
    each sweep's own report is ``diffmem report FOLDER/NAME``."""
    from diffmem.studies.factors import study_rows, summary_figure

    rows = study_rows(folder)
    report = Report(f"Factor study {folder.name}", table=rows)
    report.lines.append("One row per factor value; intervals include the training-seed spread where seeds > 1 "
                        "(else the sampling CI of one run). Per-finding reports: " +
                        ", ".join(f"{name}/report/index.html" for name in dict.fromkeys(r["finding"] for r in rows)))
    if rows:
        _add(report, out, "factors.png", "Every factor's effect on EMM or on the ratio", summary_figure(rows))
    return report


def kind_of(folder: Path) -> str:
    """``sweep`` | ``emm`` | ``run`` | ``study`` | ``factors``, from the files in the folder."""
    from diffmem.studies.factors import is_factor_study

    if (folder / "sweep.json").exists():
        try:
            sweep = json.loads((folder / "sweep.json").read_text())
            cells = sweep.get("cells", []) if isinstance(sweep, dict) else None
            if not isinstance(cells, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                      and isinstance(c.get("knobs", {}), dict) for c in cells):
                raise ValueError("no list of cells")
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(f"{folder / 'sweep.json'}: not a diffmem sweep record ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:80]})") from None
        if sweep.get("mode") == "emm" and len(cells) == 1 and not cells[0].get("knobs") and \
                (folder / cells[0]["name"]).is_dir():
            return "emm-sweep"
        return "sweep"
    if (folder / "emm.json").exists():
        return "emm"
    if (folder / "config.json").exists() and (folder / "summary.json").exists():
        return "run"
    if (folder / "results.json").exists() and any(folder.glob("*.png")):
        return "study"
    if is_factor_study(folder):
        return "factors"
    raise InputError(f"{folder}: not a run, EMM, sweep or study folder (no summary.json, emm.json, sweep.json, "
                     "or results.json with figures)")


def make_report(folder, out=None) -> Path:
    """Write the report of a run, EMM, sweep or study ``folder`` into ``out`` (default ``folder/report``);
    returns the path of ``index.html``. ``out`` must be new, empty, or an earlier report."""
    if folder is None or not str(folder).strip():
        raise InputError("an empty path is not a folder")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    kind = kind_of(folder)
    out = folder / "report" if out is None else out
    created = not str(out).strip() or not Path(out).exists()
    if not str(out).strip() or not (Path(out) / MARKER).exists():  # a report replaces only a report
        out = prepare_output(out, kind="folder", param="out")
    out = Path(out)
    try:
        report = _build(kind, folder, out)
    except BaseException as err:
        if created:  # leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, InputError) or not isinstance(err, (KeyError, TypeError, ValueError, IndexError,
                                                                AttributeError, OSError)):
            raise
        raise InputError(f"{folder}: its result files are not what diffmem writes "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
    (out / MARKER).touch()
    index = out / "index.html"
    write_text(index, render_html(report))
    return index


def _build(kind: str, folder: Path, out: Path) -> Report:
    if kind == "run":
        return run_report(folder, out)
    if kind == "emm":
        return emm_report(folder, out)
    if kind == "study":
        return study_report(folder, out)
    if kind == "factors":
        return factors_report(folder, out)
    if kind == "emm-sweep":
        sweep = json.loads((folder / "sweep.json").read_text())
        return emm_report(folder / sweep["cells"][0]["name"], out, report=Report(f"EMM {sweep['name']}"))
    return sweep_report(folder, out)
