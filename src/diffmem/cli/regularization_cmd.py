"""``diffmem regularization SPEC``: the memorized fraction of regularized optima (Tikhonov c, EB
floor τ) over a spec's strengths (:mod:`diffmem.studies.regularization`); re-running skips finished cells."""

from __future__ import annotations

import click

from diffmem.cli.options import OUT_OPTION, engine_options, resolve_device, study_arguments


@click.command("regularization")
@click.argument("spec")
@OUT_OPTION
@engine_options
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
def regularization_cmd(spec, out, device, **engine):
    """Sample the optimum regularized by each c / τ of SPEC (mode = "regularization"); write OUT/results.csv."""
    from diffmem.studies.regularization import run

    click.echo(run(spec, out, device=resolve_device(device), **study_arguments(**engine)).summary())
