"""``diffmem data``: build a training set (subset, resolution, blend, labels) and write it as an EDM zip.

A thin layer over :class:`~diffmem.data.spec.DataSpec` and :func:`~diffmem.data.spec.make_dataset`
(what sweeps train on): the flags are the spec's fields, so its errors name the flag.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from diffmem.atomic import prepare_output
from diffmem.data.io import write_dataset_zip
from diffmem.data.points import is_point_source, is_points_file, save_points
from diffmem.data.spec import MAX_RESOLUTION, MIN_RESOLUTION, DataSpec, blend_counts, heldout_set, make_dataset
from diffmem.errors import InputError


def _heldout_path(heldout_out, heldout_size, out: Path, overwrite: bool) -> Path | None:
    """The checked --heldout-out path (an unused .zip other than --out), before any work."""
    if heldout_out is None:
        if heldout_size is not None:
            raise InputError("needs --heldout-out (where to write the held-out images)", param="heldout_size")
        return None
    if heldout_size is not None and heldout_size < 1:
        raise InputError(f"must be >= 1, got {heldout_size}", param="heldout_size")
    if heldout_out.strip() and Path(heldout_out).suffix.lower() != ".zip":
        raise InputError(f"{heldout_out}: must end in .zip", param="heldout_out")
    if heldout_out.strip() and Path(heldout_out).resolve() == Path(out).resolve():
        raise InputError(f"{heldout_out}: is also --out; give the held-out images their own file", param="heldout_out")
    return prepare_output(heldout_out, kind="file", overwrite=overwrite, param="heldout_out", create=False)


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
@click.option("--blend", default=None, metavar="SOURCE:ALPHA",
              help="Intra-class diversity: replace round(ALPHA*n) of the n images of class --blend-class "
                   "(ALPHA in 0..1) with that class's images from SOURCE (digits, mnist, fashion-mnist, or a labeled "
                   "image set's path), resized like --resolution to the set's size; a fixed rule picks the replaced "
                   "positions, so sets stay nested across --size. Held-out images come from --source only. "
                   "E.g. --source digits --blend mnist:0.5 --blend-class 3.")
@click.option("--blend-class", type=int, default=None, help="The class (label value) whose images --blend replaces.")
@click.option("--dim", type=int, default=None, help="Point sources (toy2d, gaussian-mixture:K): dimension d [2].")
@click.option("--out", required=True, help="Output EDM dataset zip (a point source: an .npz of points).")
@click.option("--heldout-out", default=None,
              help="Also write held-out images (same source, classes, resolution, labels; none in --out) to this .zip.")
@click.option("--heldout-size", type=int, default=None,
              help="Number of held-out images (class-balanced, nested). Default: all the source has left.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def data_cmd(source, size, resolution, label_mode, classes, seed, split, root, dim, out, overwrite, heldout_out=None,
             heldout_size=None, blend=None, blend_class=None):
    """Write a training set as an EDM-style dataset zip (PNGs + dataset.json)."""
    spec = DataSpec(source=source, size=size, resolution=resolution, labels=label_mode, classes=classes,
                    seed=seed, split=split, root=root, dim=dim, blend=blend, blend_class=blend_class)
    if is_point_source(source) or is_points_file(source):  # as make_dataset decides
        if heldout_out is not None or heldout_size is not None:
            raise InputError(f"{source}: a point source; held-out sets are for image sources (draw fresh points "
                             f"with another --seed)", param="heldout_out" if heldout_out is not None else "heldout_size")
        return _write_points(spec, out, overwrite)
    if out.strip() and Path(out).suffix.lower() != ".zip":
        raise InputError(f"{out}: must end in .zip", param="out")
    out = prepare_output(out, kind="file", overwrite=overwrite, param="out", create=False)  # folders: on writing
    heldout_out = _heldout_path(heldout_out, heldout_size, out, overwrite)
    held = None if heldout_out is None else heldout_set(spec, heldout_size)  # its errors before any writing
    data = make_dataset(spec)
    write_dataset_zip(out, data.images, data.labels, overwrite=overwrite, param="out")
    n_classes = 0 if data.labels is None else len(np.unique(data.labels))
    c, h, w = data.shape
    mode = spec.label_mode(data.labels is not None)  # with no --labels, labels exist iff the source has them
    click.echo(f"wrote {out}: {len(data)} images, shape {c}x{h}x{w}, {n_classes} classes (labels: {mode})")
    if spec.blend is not None:
        replaced, of = blend_counts(spec)
        click.echo(f"blended: {replaced} of class {spec.blend_class}'s {of} images from {spec.blend.rpartition(':')[0]}")
    if held is not None:
        write_dataset_zip(heldout_out, held.images, held.labels, overwrite=overwrite, param="heldout_out")
        click.echo(f"wrote {heldout_out}: {len(held)} held-out images (none of them in {out})")


def _write_points(spec: DataSpec, out: str, overwrite: bool) -> None:
    """A point source's set as an ``.npz`` with ``points`` (N, d) and, with labels, ``labels``."""
    if out.strip() and Path(out).suffix.lower() != ".npz":
        raise InputError(f"{out}: a point cloud is written as an .npz; end it in .npz", param="out")
    out = prepare_output(out, kind="file", overwrite=overwrite, param="out", create=False)
    cloud = make_dataset(spec)
    save_points(out, cloud, overwrite=overwrite, param="out")
    click.echo(f"wrote {out}: {len(cloud)} points in {cloud.dim} dimensions, {cloud.num_classes} classes "
               f"(labels: {spec.labels or 'none'})")
