"""``diffmem data``: build a training set (subset, resolution, labels) and write it as an EDM zip."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from diffmem.atomic import prepare_output
from diffmem.data.imageset import ImageSet
from diffmem.data.io import write_dataset_zip
from diffmem.data.sources import load_source
from diffmem.data.subsets import assign_labels, class_balanced_subset, parse_label_mode, resize, select_classes, take
from diffmem.errors import InputError, check_number
from diffmem.rng import check_seed

MIN_RESOLUTION, MAX_RESOLUTION = 4, 256


@click.command("data")
@click.option("--source", required=True,
              help="digits, mnist, fashion-mnist, cifar10 (with --root), or a PNG folder / .npz / dataset .zip / idx file.")
@click.option("--size", type=int, default=None,
              help="Number of images: the first SIZE/K of each of the first K classes (nested; with --classes, "
                   "SIZE must divide evenly). Default: all.")
@click.option("--resolution", type=int, default=None, help=f"Square output size in pixels ({MIN_RESOLUTION}..{MAX_RESOLUTION}).")
@click.option("--labels", "label_mode", default=None,
              help="none | true | random:C | unique. Default: true if the source has labels, else none.")
@click.option("--classes", type=int, default=None, help="Use only the first K classes (smallest label values).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random labels (0..2^63-1).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--root", default=None, help="Where a source's files are (cifar10 archive, idx folder).")
@click.option("--out", required=True, help="Output EDM dataset zip.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def data_cmd(source, size, resolution, label_mode, classes, seed, split, root, out, overwrite):
    """Write a training set as an EDM-style dataset zip (PNGs + dataset.json)."""
    if size is not None:
        size = check_number("size", size, lo=0, lo_open=True, integer=True)
    if classes is not None:
        classes = check_number("classes", classes, lo=0, lo_open=True, integer=True)
    if size is not None and classes is not None and size % classes:
        raise InputError(f"{size} is not divisible by --classes {classes}", param="size")
    if resolution is not None:
        resolution = check_number("resolution", resolution, lo=MIN_RESOLUTION, hi=MAX_RESOLUTION, integer=True)
    if label_mode is not None:
        parse_label_mode(label_mode)
    seed = check_seed(seed, "seed")
    if out.strip() and Path(out).suffix.lower() != ".zip":
        raise InputError(f"{out}: must end in .zip", param="out")
    out = prepare_output(out, kind="file", overwrite=overwrite, param="out", create=False)  # folders: on writing

    data = _subset(load_source(source, split=split, root=root), size, classes)
    if resolution is not None:
        data = resize(data, resolution)
    if label_mode is None:
        label_mode = "none" if data.labels is None else "true"
    labels = assign_labels(data.labels, label_mode, seed, n=len(data))
    write_dataset_zip(out, data.images, labels, overwrite=overwrite, param="out")
    n_classes = 0 if labels is None else len(np.unique(labels))
    c, h, w = data.shape
    click.echo(f"wrote {out}: {len(data)} images, shape {c}x{h}x{w}, {n_classes} classes (labels: {label_mode})")


def _subset(data: ImageSet, size: int | None, classes: int | None) -> ImageSet:
    """``--size`` / ``--classes``: the nested class-balanced subset, or the first SIZE images of an
    unlabeled source (still nested)."""
    if size is not None:
        if data.labels is None and classes is None:
            if size > len(data):
                raise InputError(f"the source has only {len(data)} images, asked for {size}", param="size")
            return take(data, np.arange(size))
        # exact balance when --classes is given; otherwise remainders go to the first classes
        return class_balanced_subset(data, size, classes, exact=classes is not None)
    if classes is not None:
        return select_classes(data, classes)
    return data
