"""``diffmem demo``: the README's main job (:func:`diffmem.studies.demo.run_demo`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from diffmem.atomic import prepare_output
from diffmem.studies.demo import DEMO_SIZES


def _free_folder(base: str) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    path, k = Path(base), 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


@click.command("demo")
@click.option("--out", "out_dir", default=None, help="Output folder (default: a new ./diffmem-demo[-N]).")
@click.option("--sizes", default=",".join(map(str, DEMO_SIZES)), show_default=True, help="Training-set sizes |D|.")
@click.option("--epochs", type=float, default=1000, show_default=True, help="Training epochs at every |D|.")
@click.option("--num", type=int, default=200, show_default=True, help="Samples per memorization measurement.")
@click.option("--workers", type=int, default=2, show_default=True, help="Training runs at a time (one thread each).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_cmd(out_dir, sizes, epochs, num, workers, seed):
    """EMM demo on built-in digits: the optimum copies at every |D|, a trained DDPM++ only below its EMM
    (about 3 minutes on 2 cores)."""
    from diffmem.studies.demo import run_demo
    from diffmem.denoisers.networks import parse_int_tuple
    from diffmem.errors import check_number
    from diffmem.rng import check_seed

    sizes = parse_int_tuple("sizes", sizes, 2)
    workers = check_number("workers", workers, lo=1, hi=64, integer=True)
    check_number("epochs", epochs, lo=0, lo_open=True)
    check_number("num", num, lo=2, integer=True)
    check_seed(seed)
    out = prepare_output(_free_folder("diffmem-demo") if out_dir is None else out_dir, kind="folder", param="out",
                         create=False)  # created by run_demo once everything is validated
    run_demo(out, sizes=sizes, epochs=epochs, samples=num, workers=workers, seed=seed,
             progress=sys.stderr.isatty(), log=click.echo)
