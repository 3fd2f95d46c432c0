"""``diffmem random-features SPEC --out DIR [--workers N]``: the random-features study of seed 003
(:func:`diffmem.studies.rf.run_rf_study`): curves, onsets, fits and figures in DIR."""

from __future__ import annotations

import click

from diffmem.cli.options import engine_options, study_arguments


@click.command("random-features")
@click.argument("spec")
@click.option("--out", required=True, help="Output folder (new, or without results.json, curves.csv, ...).")
@engine_options
def rf_cmd(spec, out, **engine):
    """Random-features score model at one diffusion time: train/test loss, score error and the gap's
    onset over psi_n = n/d and psi_p = p/d (SPEC: TOML with name and [rf]; OUT: new, or without
    results.json, curves.csv, ...)."""
    from diffmem.studies.rf import run

    click.echo(run(spec, out, **study_arguments(**engine)).summary())
