"""``diffmem demo``: the closed-form optimum copies its training set; the memorization ratio sees it.

On scikit-learn's 8×8 digits (ships with scikit-learn, nothing to download):
1. nested class-balanced training sets of |D| = 64 and 1024 images;
2. samples of the empirical optimal denoiser D* (EDM Heun, 18 steps), measured against their
   training set: the memorization ratio is ~1 at every size — the optimum only reproduces;
3. the same measurement on real held-out digits (a perfect generalizer's samples): ratio ~0;
4. Tikhonov-regularized optima (Baptista et al.) at |D| = 64: memorization falls as c grows.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from diffmem.atomic import prepare_output, write_json
from diffmem.data.imageset import to_uint8
from diffmem.data.sources import load_source
from diffmem.data.subsets import class_balanced_indices, take
from diffmem.denoisers.optimal import OptimalDenoiser
from diffmem.errors import check_number
from diffmem.metrics.memorization import memorization
from diffmem.rng import check_seed
from diffmem.sampling import sample

OUTPUTS = ("summary.json", "neighbors-optimum-64.png", "regularization.png")


def _free_folder(base: str) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    path, k = Path(base), 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


@click.command("demo")
@click.option("--out", "out_dir", default=None, help="Output folder (default: a new ./diffmem-demo[-N]).")
@click.option("--num", type=int, default=500, show_default=True, help="Samples per measurement.")
@click.option("--sizes", default="64,1024", show_default=True, help="Training-set sizes |D|.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_cmd(out_dir, num, sizes, seed):
    """Optimum-vs-memorization demo on digits: D* memorizes at every |D|, regularization controls it."""
    from diffmem.denoisers.networks import parse_int_tuple
    from diffmem.plots import save_neighbor_grid, save_curve

    sizes = parse_int_tuple("sizes", sizes, 1)
    num = check_number("num", num, lo=0, lo_open=True, integer=True)
    seed = check_seed(seed, "seed")
    out = prepare_output(_free_folder("diffmem-demo") if out_dir is None else out_dir, kind="folder", names=OUTPUTS)
    digits = load_source("digits")
    rows, t0 = [], time.time()
    click.echo(f"digits: {len(digits)} images of {digits.shape}; {num} samples per measurement; writing {out}/")
    click.echo(f"{'|D|':>6} {'denoiser':>22} {'memorization':>13} {'95% CI':>17}")
    for size in sizes:
        index = class_balanced_indices(digits.labels, size, exact=False)
        train = take(digits, index)
        held_out = np.setdiff1d(np.arange(len(digits)), index)[:num]
        cases = [("optimum D*", OptimalDenoiser(train), None)]
        cases.append(("held-out real digits", None, digits.images[held_out]))
        for name, D, images in cases:
            if images is None:
                images = to_uint8(sample(D, num, train.shape, seed=seed).numpy())
            result = memorization(train, images, seed=seed)
            rows.append({"size": size, "denoiser": name, "memorization_ratio": result.ratio,
                         "ci95": list(result.ci95), "n_generated": len(images)})
            click.echo(f"{size:>6} {name:>22} {result.ratio:>13.3f}   [{result.ci95[0]:.3f}, {result.ci95[1]:.3f}]")
            if name == "optimum D*" and size == sizes[0]:
                save_neighbor_grid(out / OUTPUTS[1], images, train.images, result)
    size = sizes[0]
    train = take(digits, class_balanced_indices(digits.labels, size, exact=False))
    strengths = [0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    ratios = []
    for c in strengths:
        D = OptimalDenoiser(train, regularize=("tikhonov", c))
        result = memorization(train, to_uint8(sample(D, num, train.shape, seed=seed).numpy()), seed=seed)
        ratios.append(result.ratio)
        rows.append({"size": size, "denoiser": f"tikhonov c={c:g}", "memorization_ratio": result.ratio,
                     "ci95": list(result.ci95), "n_generated": num})
        click.echo(f"{size:>6} {f'tikhonov c={c:g}':>22} {result.ratio:>13.3f}   [{result.ci95[0]:.3f}, {result.ci95[1]:.3f}]")
    save_curve(out / OUTPUTS[2], strengths, ratios, xlabel="Tikhonov strength c", ylabel="memorization ratio",
               title=f"Regularized optimum, digits |D|={size}", logx=True)
    write_json(out / OUTPUTS[0], {"source": "digits", "num": num, "seed": seed, "results": rows,
                                         "seconds": round(time.time() - t0, 1)})
    click.echo(f"done in {time.time() - t0:.1f}s: {out / OUTPUTS[0]}, {out / OUTPUTS[1]}, {out / OUTPUTS[2]}")
