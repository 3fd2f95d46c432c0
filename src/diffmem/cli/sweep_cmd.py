"""``diffmem sweep SPEC`` and ``diffmem emm SPEC``: resumable cells on a local pool or Ray
(:mod:`diffmem.sweep`); re-running the same command skips what is finished."""

from __future__ import annotations

import click

from diffmem.errors import check_number
from diffmem.engines import check_pool
from diffmem.progress import progress_enabled

ENGINE_OPTIONS = [
    click.option("--out", default=None, help="Output folder [a folder named after the spec, here]."),
    click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="local: worker processes here; ray: Ray tasks (pip install 'diffmem[ray]')."),
    click.option("--workers", type=int, default=1, show_default=True, help="Runs at a time."),
    click.option("--threads", type=int, default=None, help="Threads per run [cores / workers]."),
    click.option("--address", default=None, help="Ray: address of an existing cluster (default: a local instance)."),
    click.option("--gpus", type=float, default=0.0, show_default=True, help="Ray: GPUs requested per run."),
    click.option("--progress/--no-progress", default=None,
                 help="A line on stderr as each run (EMM size) finishes, with an ETA [on unless $CI is set]."),
]


def _engine_options(fn):
    for option in reversed(ENGINE_OPTIONS):
        fn = option(fn)
    return fn


def _engine(workers, threads, engine, address, gpus, progress) -> dict:
    workers, threads = check_pool(workers, threads)
    gpus = check_number("gpus", gpus, lo=0)
    return dict(engine=engine, workers=workers, threads=threads, address=address, gpus=gpus,
                progress=progress_enabled(progress),
                log=lambda line: click.echo(line, err=True))


@click.command("sweep")
@click.argument("spec")
@_engine_options
def sweep_cmd(spec, out, engine, workers, threads, address, gpus, progress):
    """Run a sweep SPEC (TOML: [data], [train], [axes], optional [emm]); write OUT/results.csv."""
    from diffmem.specs import parse_spec
    from diffmem.sweep import TABLE_CSV, run_sweep

    parsed = parse_spec(spec)
    result = run_sweep(parsed, out, **_engine(workers, threads, engine, address, gpus, progress))
    click.echo(f"{len(result.rows)} cells finished; table in {result.out / TABLE_CSV}")
    if result.by_seed is not None:
        click.echo(f"{len(result.by_seed)} configurations over their training seeds in {result.out / 'seeds.csv'}")


@click.command("emm")
@click.argument("spec")
@_engine_options
def emm_cmd(spec, out, engine, workers, threads, address, gpus, progress):
    """EMM of one configuration: SPEC has [data], [train] and [emm] (sizes or an adaptive range)."""
    from diffmem.specs import parse_spec
    from diffmem.sweep import emm

    parsed = parse_spec(spec, mode="emm")
    estimate = emm(parsed, out, **_engine(workers, threads, engine, address, gpus, progress))
    for p in estimate.points:
        click.echo(f"|D| = {p.size:>6}: ratio {p.ratio:.3f} [{p.ci95[0]:.3f}, {p.ci95[1]:.3f}] (epoch {p.epoch:g})")
    click.echo(estimate.advice)
