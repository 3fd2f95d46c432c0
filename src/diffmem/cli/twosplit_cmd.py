"""``diffmem two-split SPEC --out DIR``: the two-split test (:mod:`diffmem.studies.twosplit`); re-running
the same command skips what is finished."""

from __future__ import annotations

import click
from diffmem.studies.engines import check_pool


@click.command("two-split")
@click.argument("spec")
@click.option("--out", required=True, help="Output folder (new, empty, or this spec's earlier two-split).")
@click.option("--workers", type=int, default=1, show_default=True, help="Training runs at a time.")
@click.option("--threads", type=int, default=None, help="Threads per run [cores / workers].")
def twosplit_cmd(spec, out, workers, threads):
    """Two-split test: two models on disjoint halves of 2n images, sampled from the same noise, for
    each n of SPEC's [twosplit] sizes; writes OUT/results.csv and figures."""
    from diffmem.atomic import prepare_output
    from diffmem.studies.specs import parse_spec
    from diffmem.studies.sweep import TABLE_CSV
    from diffmem.studies.twosplit import plan_from_spec, run_twosplit

    workers, threads = check_pool(workers, threads)
    plan = plan_from_spec(parse_spec(spec))
    folder = prepare_output(out, kind="folder", param="out", overwrite=True, create=False)
    result = run_twosplit(plan, folder, workers=workers, threads=threads, log=lambda line: click.echo(line, err=True))
    click.echo(f"{len(result.rows)} sizes finished; table in {result.out / TABLE_CSV}")
