"""``diffmem regularization SPEC``: the memorized fraction of regularized optima (Tikhonov c, EB
floor τ) over a spec's strengths (:mod:`diffmem.studies.regularization`); re-running skips finished cells."""

from __future__ import annotations

import click

from diffmem.cli.options import resolve_device


@click.command("regularization")
@click.argument("spec")
@click.option("--out", default=None, help="Output folder [a folder named after the spec, here].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
def regularization_cmd(spec, out, device):
    """Sample the optimum regularized by each c / τ of SPEC (mode = "regularization"); write OUT/results.csv."""
    from diffmem.studies.regularization import run_regularization
    from diffmem.studies.specs import parse_spec

    parsed = parse_spec(spec)
    rows = run_regularization(parsed, out, device=resolve_device(device),
                              log=lambda line: click.echo(line, err=True))
    click.echo(f"{len(rows)} strengths measured; table in {out or parsed.name}/results.csv")
