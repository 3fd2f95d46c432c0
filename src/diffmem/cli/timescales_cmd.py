"""``diffmem timescales SPEC``: τ_gen and τ_mem against the training-set size
(:mod:`diffmem.timescales`); re-running the same command recomputes nothing that is finished."""

from __future__ import annotations

import click

from diffmem.engines import check_pool
from diffmem.progress import progress_enabled


@click.command("timescales")
@click.argument("spec")
@click.option("--out", default=None, help="Output folder [a folder named after the spec, here].")
@click.option("--workers", type=int, default=1, show_default=True, help="Runs at a time (local processes).")
@click.option("--threads", type=int, default=None, help="Threads per run [cores / workers].")
@click.option("--progress/--no-progress", default=None,
              help="A line on stderr as each snapshot and run is measured, with an ETA [on unless $CI is set].")
def timescales_cmd(spec, out, workers, threads, progress):
    """Train SPEC's sizes with log-spaced snapshots; per snapshot f_mem (CI) and FD; τ_gen, τ_mem, τ_mem = a·n."""
    from diffmem.specs import parse_spec
    from diffmem.timescales import RESULT_FILE, run_timescales

    workers, threads = check_pool(workers, threads)
    parsed = parse_spec(spec, mode="timescales")
    log = (lambda line: click.echo(line, err=True)) if progress_enabled(progress) else None
    result = run_timescales(parsed, out, workers=workers, threads=threads, log=log)
    unit = result["settings"]["time"]
    for row in result["rows"]:
        fmt = lambda v: "never" if v is None else f"{v:.4g}"  # noqa: E731
        click.echo(f"n = {row['n']:>6}: tau_gen {fmt(row['tau_gen'])}, tau_mem {fmt(row['tau_mem'])} {unit}; "
                   f"f_mem at the end {row['f_mem_final']:.3f}")
    click.echo(result["summary"])
    click.echo(f"results in {(out or parsed.name)}/{RESULT_FILE}")
