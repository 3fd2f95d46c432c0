"""``diffmem timescales SPEC``: τ_gen and τ_mem against the training-set size
(:mod:`diffmem.studies.timescales`); re-running the same command recomputes nothing that is finished."""

from __future__ import annotations

import click

from diffmem.cli.options import OUT_OPTION, engine_options, study_arguments


@click.command("timescales")
@click.argument("spec")
@OUT_OPTION
@engine_options
def timescales_cmd(spec, out, **engine):
    """Train SPEC's sizes with log-spaced snapshots; per snapshot f_mem (CI) and FD; τ_gen, τ_mem, τ_mem = a·n."""
    from diffmem.studies.timescales import run

    click.echo(run(spec, out, **study_arguments(**engine)).summary())
