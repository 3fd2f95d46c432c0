"""``diffmem random-features SPEC --out DIR [--workers N]``: the random-features study of seed 003
(:func:`diffmem.studies.rf.run_rf_study`): curves, onsets, fits and figures in DIR."""

from __future__ import annotations

import click
from diffmem.studies.engines import check_pool


@click.command("random-features")
@click.argument("spec")
@click.option("--out", required=True, help="Output folder (new, or without results.json, curves.csv, ...).")
@click.option("--workers", type=int, default=1, show_default=True, help="Cells at a time (processes).")
@click.option("--threads", type=int, default=None, help="Threads per cell [cores / workers].")
def rf_cmd(spec, out, workers, threads):
    """Random-features score model at one diffusion time: train/test loss, score error and the gap's
    onset over psi_n = n/d and psi_p = p/d (SPEC: TOML with name and [rf])."""
    from diffmem.studies.rf import RESULTS_JSON, parse_rf_spec, run_rf_study

    workers, threads = check_pool(workers, threads)
    name, settings = parse_rf_spec(spec)
    record = run_rf_study(name, settings, out, workers=workers, threads=threads,
                          log=lambda line: click.echo(line, err=True))
    for key, fit in record["fits"].items():
        line = fit.get("linear")
        if line:
            click.echo(f"psi_p = {key}: onset tau = {line['slope']:.4g} * psi_n {line['intercept']:+.4g} "
                       f"(R^2 = {line['r2']:.3f}; exponent {fit['power']['exponent']:.3f})")
        else:
            click.echo(f"psi_p = {key}: {fit['note']}")
    click.echo(f"results in {out}/{RESULTS_JSON}")
