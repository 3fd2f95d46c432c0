"""``diffmem select RUN --max-memorization F``: the snapshot with the best quality among those that
memorize at most F (:func:`diffmem.studies.guard.select_snapshot`), as one line to act on."""

from __future__ import annotations

import json

import click


@click.command("select")
@click.argument("run")
@click.option("--max-memorization", type=float, required=True, metavar="F",
              help="Largest acceptable memorized fraction f_mem, in [0, 1].")
@click.option("--features", default="classifier", show_default=True,
              help="FD feature space: classifier | pixels | pca:K | a TorchScript file.")
@click.option("--source", default=None,
              help="Built-in source of the classifier features (digits, mnist, fashion-mnist) [from data.json].")
@click.option("--samples", type=int, default=200, show_default=True, help="Generated images per snapshot.")
@click.option("--heldout", default=None, help="Held-out images (zip, PNG folder, .npz) [from the run's data.json].")
@click.option("--num-heldout", type=int, default=500, show_default=True, help="Held-out images drawn from data.json.")
@click.option("--train", "train_set", default=None, help="The run's training set [from the run's data.json].")
@click.option("--json", "as_json", is_flag=True, help="Print the selection as one JSON object.")
def select_cmd(run, max_memorization, features, source, samples, heldout, num_heldout, train_set, as_json):
    """Pick RUN's snapshot with the lowest FD among those with f_mem <= F (exit 1 when none qualifies)."""
    from diffmem.studies.guard import select_snapshot

    selection = select_snapshot(run, max_memorization, heldout=heldout, train=train_set, features=features,
                                samples=samples, num_heldout=num_heldout, source=source,
                                log=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(selection.to_dict()) if as_json else selection.answer)
    if selection.snapshot is None:
        raise click.exceptions.Exit(1)
