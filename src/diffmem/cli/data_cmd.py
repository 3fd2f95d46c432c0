"""``diffmem data``: build a training set (subset, resolution, labels) and write it as an EDM zip."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from diffmem.cli import main
from diffmem.data.io import write_dataset_zip
from diffmem.data.sources import load_source
from diffmem.data.subsets import assign_labels, class_balanced_subset, parse_label_mode, resize, select_classes, take
from diffmem.errors import InputError

MIN_RESOLUTION, MAX_RESOLUTION = 4, 256


@main.command("data")
@click.option("--source", required=True,
              help="digits, mnist, fashion-mnist, cifar10 (with --root), or a PNG folder / .npz / dataset .zip / idx file.")
@click.option("--size", type=int, default=None,
              help="Number of images: the first SIZE/K of each of the first K classes (nested; with --classes, "
                   "SIZE must divide evenly). Default: all.")
@click.option("--resolution", type=int, default=None, help=f"Square output size in pixels ({MIN_RESOLUTION}..{MAX_RESOLUTION}).")
@click.option("--labels", "label_mode", default=None,
              help="none | true | random:C | unique. Default: true if the source has labels, else none.")
@click.option("--classes", type=int, default=None, help="Use only the first K classes (smallest label values).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random labels.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--root", default=None, help="Where a source's files are (cifar10 archive, idx folder).")
@click.option("--out", required=True, help="Output EDM dataset zip.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def data_cmd(source, size, resolution, label_mode, classes, seed, split, root, out, overwrite):
    """Write a training set as an EDM-style dataset zip (PNGs + dataset.json)."""
    if size is not None and size <= 0:
        raise InputError(f"--size: must be > 0, got {size}")
    if classes is not None and classes <= 0:
        raise InputError(f"--classes: must be > 0, got {classes}")
    if size is not None and classes is not None and size % classes:
        raise InputError(f"--size: {size} is not divisible by --classes {classes}")
    if resolution is not None and not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise InputError(f"--resolution: must be in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution}")
    if label_mode is not None:
        parse_label_mode(label_mode)
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError(f"--out {out}: must end in .zip")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out}: already exists; pass --overwrite to replace it")

    data = load_source(source, split=split, root=root)
    if size is not None:
        if data.labels is None and classes is None:  # unlabeled source: the first SIZE images (still nested)
            if size > len(data):
                raise InputError(f"--size: the source has only {len(data)} images, asked for {size}")
            data = take(data, np.arange(size))
        else:
            # exact balance when --classes is given; otherwise remainders go to the first classes
            data = class_balanced_subset(data, size, classes, exact=classes is not None)
    elif classes is not None:
        data = select_classes(data, classes)
    if resolution is not None:
        data = resize(data, resolution)
    if label_mode is None:
        label_mode = "none" if data.labels is None else "true"
    labels = assign_labels(data.labels, label_mode, seed, n=len(data))

    try:
        write_dataset_zip(out, data.images, labels, overwrite=overwrite)
    except InputError as err:
        raise InputError(f"--out {err}") from None
    n_classes = 0 if labels is None else len(np.unique(labels))
    c, h, w = data.shape
    click.echo(f"wrote {out}: {len(data)} images, shape {c}x{h}x{w}, {n_classes} classes (labels: {label_mode})")
