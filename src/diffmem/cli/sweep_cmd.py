"""``diffmem sweep SPEC`` and ``diffmem emm SPEC``: resumable cells on a local pool or Ray
(:mod:`diffmem.studies.sweep`); re-running the same command skips what is finished."""

from __future__ import annotations

import click

from diffmem.cli.options import OUT_OPTION, engine_options, study_arguments


@click.command("sweep")
@click.argument("spec")
@OUT_OPTION
@engine_options
def sweep_cmd(spec, out, **engine):
    """Run a sweep SPEC (TOML: [data], [train], [axes], optional [emm]); write OUT/results.csv."""
    from diffmem.studies.specs import parse_spec
    from diffmem.studies.sweep import TABLE_CSV, run

    result = run(parse_spec(spec), out, **study_arguments(**engine))
    click.echo(f"{len(result.rows())} cells finished; table in {result.out / TABLE_CSV}")
    by_seed = getattr(result.detail, "by_seed", None)  # a sweep over train.seed: the seed aggregates
    if by_seed is not None:
        click.echo(f"{len(by_seed)} configurations over their training seeds in {result.out / 'seeds.csv'}")


@click.command("emm")
@click.argument("spec")
@OUT_OPTION
@engine_options
def emm_cmd(spec, out, **engine):
    """EMM of one configuration: SPEC has [data], [train] and [emm] (sizes or an adaptive range)."""
    from diffmem.studies.specs import parse_spec
    from diffmem.studies.sweep import check_one_configuration, run

    parsed = check_one_configuration(parse_spec(spec, mode="emm"))
    click.echo(run(parsed, out, **study_arguments(**engine)).summary())
