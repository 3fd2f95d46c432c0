"""The demo: on built-in 8×8 digits, the closed-form optimum copies its training set at every |D|,
while a small trained DDPM++ copies only small training sets — its EMM, measured.

1. nested class-balanced, unlabeled training sets of |D| = 8, 16, 32, 64;
2. the empirical optimum D* sampled at each size (EDM Heun, 18 steps): ratio 1.0 at every |D|;
   held-out real digits (what a perfect generalizer would draw) as the other reference: 0.0;
3. a 0.18 M-parameter DDPM++ (preset ``tiny`` at 16 channels, EDM preconditioning) trained for
   the same number of epochs at every |D| (seed 001's protocol), its memorization ratio tracked,
   and EMM_0.1 interpolated with its interval — through :func:`diffmem.studies.sweep.emm`, the code path of
   ``diffmem emm`` (the spec is written beside the results, to re-run or change);
4. the report: ratio vs |D| (optimum and network, with 1 - ε and the EMM), ratio vs epoch,
   a nearest-neighbour grid at the largest memorized size; PNGs and ``report/index.html``.

Calibrated on 2 CPU cores: the whole demo took 169 s with two one-thread workers (fresh clone); the
bracket came out as [16, 32] (ratios 0.98, 0.94, 0.72, 0.53 at 8, 16, 32, 64 images).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diffmem.atomic import write_json, write_text
from diffmem.data.imageset import to_uint8
from diffmem.data.sources import load_source
from diffmem.data.spec import DataSpec, make_dataset
from diffmem.data.subsets import class_balanced_indices
from diffmem.denoisers.optimal import OptimalDenoiser
from diffmem.studies.emm import SizePoint, estimate_emm
from diffmem.errors import InputError, check_number
from diffmem.metrics.memorization import memorization
from diffmem.pages import render_html
from diffmem.studies.report import emm_report, ratio_vs_size
from diffmem.rng import check_seed
from diffmem.sampling import sample
from diffmem.studies.sweep import emm

DEMO_SIZES = (8, 16, 32, 64)
DEMO_TRAIN = dict(preset="tiny", channels=16, precond="edm", epochs=1000, batch=32, lr=2e-3, ema_rate=0.99, ema_rampup=0.05,
                  track_every=100, checkpoint_every=500)


def demo_spec(sizes=DEMO_SIZES, epochs: float = 1000, samples: int = 200, seed: int = 0) -> str:
    """The demo's EMM as a TOML spec for ``diffmem emm``."""
    train = {**DEMO_TRAIN, "epochs": epochs, "track_samples": samples, "seed": seed,
             "track_every": max(1, min(DEMO_TRAIN["track_every"], int(epochs) // 4))}
    lines = ["# The demo's EMM (diffmem demo); re-run with: diffmem emm THIS_FILE --workers 2", 'name = "demo"', "",
             "[data]", 'source = "digits"', 'labels = "none"', "", "[train]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in train.items()]
    lines += ["", "[emm]", "epsilon = 0.1", f"sizes = {list(sizes)}", ""]
    return "\n".join(lines)


def optimum_points(sizes, samples: int, seed: int, log) -> tuple[list[SizePoint], dict]:
    """D* sampled and measured at each size; and held-out real digits at the largest size."""
    points = []
    for size in sizes:
        train = make_dataset(DataSpec("digits", size=size, labels="none"))
        images = to_uint8(sample(OptimalDenoiser(train), samples, seed=seed).numpy())
        r = memorization(train, images, seed=seed)
        points.append(SizePoint(size, r.ratio, tuple(r.ci95), samples))
        log(f"{size:>6} {'optimum D*':>24} {r.ratio:>13.3f}   [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]")
    digits = load_source("digits")
    train = make_dataset(DataSpec("digits", size=max(sizes), labels="none"))
    used = class_balanced_indices(digits.labels, max(sizes), exact=False)  # the images make_dataset took
    held_out = np.delete(digits.images, used, axis=0)[:samples]
    r = memorization(train, held_out, seed=seed)
    log(f"{max(sizes):>6} {'held-out real digits':>24} {r.ratio:>13.3f}   [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]")
    return points, {"size": max(sizes), "ratio": r.ratio, "ci95": list(r.ci95), "n": len(held_out)}


def _check_spec(text: str) -> None:
    """The demo's EMM spec validated (every size's data, plan and network) before anything is
    written; a problem names the demo's parameter (``sizes``, ``epochs``, ``num``)."""
    import tempfile

    from diffmem.studies.specs import check_cells, parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spec.toml").write_text(text)
        try:
            check_cells(parse_spec(Path(tmp) / "spec.toml", mode="emm"))
        except InputError as err:
            detail = err.detail.split("spec.toml: ", 1)[-1]  # "[emm] sizes: ..." without the temporary path
            key = detail.split(":", 1)[0]
            param = "epochs" if "epochs" in key else "num" if "track_samples" in key else "sizes"
            raise InputError(detail, param=param) from None


def run_demo(out, *, sizes=DEMO_SIZES, epochs: float = 1000, samples: int = 200, workers: int = 2,
             seed: int = 0, progress: bool = False, log=print) -> dict:
    """Run the demo into the new folder ``out``; returns (and writes) ``summary.json``'s content."""
    sizes = sorted({check_number("sizes", s, lo=2, integer=True) for s in sizes})
    samples = check_number("num", samples, lo=2, integer=True)
    epochs = check_number("epochs", epochs, lo=1)
    seed = check_seed(seed)
    out, t0 = Path(out), time.time()
    spec_text = demo_spec(sizes, epochs, samples, seed)
    _check_spec(spec_text)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "spec.toml", spec_text)
    log(f"{'|D|':>6} {'denoiser':>24} {'memorization':>13} {'95% CI':>17}")
    optimum, held_out = optimum_points(sizes, samples, seed, log)
    log(f"training a 0.18 M-parameter DDPM++ for {epochs:g} epochs at |D| = {', '.join(map(str, sizes))} "
        f"on {workers} workers; each line below is a finished run ...")
    from diffmem.studies.specs import parse_spec

    estimate = emm(parse_spec(out / "spec.toml", mode="emm"), out / "emm", workers=workers, progress=progress,
                   log=lambda line: log("  " + line))
    for p in estimate.points:
        log(f"{p.size:>6} {'DDPM++ (tiny, trained)':>24} {p.ratio:>13.3f}   [{p.ci95[0]:.3f}, {p.ci95[1]:.3f}]")
    log(estimate.advice)
    index = _report(out, estimate, optimum)
    summary = {"sizes": sizes, "epochs": epochs, "samples": samples, "seed": seed,
               "optimum": [{"size": p.size, "ratio": p.ratio, "ci95": list(p.ci95)} for p in optimum],
               "held_out": held_out, "emm": estimate.to_dict(), "report": str(index),
               "seconds": round(time.time() - t0, 1)}
    write_json(out / "summary.json", summary, allow_nan=False)
    log(f"done in {summary['seconds']:.0f} s: {out / 'summary.json'}, report {index}")
    return summary


def _report(out: Path, estimate, optimum: list[SizePoint]) -> Path:
    folder = out / "report"
    folder.mkdir(exist_ok=True)
    report = emm_report(out / "emm" / "base", folder, label="DDPM++")
    both = {"DDPM++ (trained)": estimate.to_dict(), "optimum D*": estimate_emm(optimum).to_dict()}
    fig = ratio_vs_size(both)
    from diffmem.plots import save_figure

    report.figures.insert(0, ("The optimum copies at every |D|; the trained network only below its EMM",
                              save_figure(fig, folder / "optimum_vs_network.png")))
    report.title = "diffmem demo: memorization vs training-set size on 8×8 digits"
    index = folder / "index.html"
    write_text(index, render_html(report))
    return index
