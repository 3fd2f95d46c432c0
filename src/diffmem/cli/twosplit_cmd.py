"""``diffmem two-split SPEC --out DIR``: the two-split test (:mod:`diffmem.studies.twosplit`); re-running
the same command skips what is finished."""

from __future__ import annotations

import click

from diffmem.cli.options import engine_options, study_arguments


@click.command("two-split")
@click.argument("spec")
@click.option("--out", required=True, help="Output folder (new, empty, or this spec's earlier two-split).")
@engine_options
def twosplit_cmd(spec, out, **engine):
    """Two-split test: two models on disjoint halves of 2n images, sampled from the same noise, for
    each n of SPEC's [twosplit] sizes; writes OUT/results.csv and figures (OUT: new, empty, or this
    spec's earlier two-split)."""
    from diffmem.studies.twosplit import run

    click.echo(run(spec, out, **study_arguments(**engine)).summary())
