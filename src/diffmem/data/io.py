"""Reading image sets from disk and writing them back.

:func:`load_image_set` reads every on-disk format the command line accepts and returns an
:class:`~diffmem.data.imageset.ImageSet` (NCHW, ``uint8`` or ``float32`` in ``[-1, 1]``):

- a folder of PNGs, searched recursively and sorted by relative path (plus ``dataset.json``
  labels if the folder has one, as an extracted EDM dataset does);
- an ``.npz``: array ``images`` (else the only array other than ``labels``), optional ``labels``;
  uint8 (or any integer type within 0..255) NCHW, NHWC or NHW, or float in ``[-1, 1]``;
- an EDM-style dataset ``.zip``: PNGs plus optional ``dataset.json`` holding
  ``{"labels": [[name, int], ...]}`` or ``{"labels": null}``;
- the CIFAR-10 python archive ``cifar-10-python.tar.gz`` or its folder ``cifar-10-batches-py``;
- MNIST-style idx files ``*-idx3-ubyte`` (optionally ``.gz``), with labels from the matching
  ``*-idx1-ubyte`` file when it sits beside them;
- a single PNG.

Labels are class indices ``0 .. 2**20 - 1`` (:data:`~diffmem.data.imageset.MAX_LABEL`); larger
values are refused. Each format lives in its own module under :mod:`diffmem.data.formats`.

Every problem raises :class:`~diffmem.errors.InputError` naming the parameter the path came from
(``what``: ``"train"``, or a flag such as ``"--train"``) and the file at fault. Writers are atomic
(temporary file, then ``os.replace``), give their output the modes the umask allows, and refuse
to replace existing output unless told to.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffmem.data.formats.cifar import CIFAR10_CLASSES, cifar_folder, read_cifar10
from diffmem.data.formats.common import exists, fail, input_path, param_name
from diffmem.data.formats.edmzip import read_dataset_zip, write_dataset_zip
from diffmem.data.formats.idx import IDX_IMAGES, read_idx
from diffmem.data.formats.npz import read_npz, save_npz
from diffmem.data.formats.png import read_png, read_png_file, read_png_folder, write_png_folder
from diffmem.data.imageset import ImageSet

__all__ = [
    "load_image_set",
    "read_png",
    "read_cifar10",
    "read_idx",
    "write_dataset_zip",
    "write_png_folder",
    "save_npz",
    "CIFAR10_CLASSES",
]


def load_image_set(path: str | Path, *, what: str = "train", split: str = "train") -> ImageSet:
    """Read an image set from ``path`` (see the module docstring for the formats).

    ``what`` is the parameter (or flag) the path came from: errors read ``"{what}: {path}: ..."``
    and the command line shows it as a flag. An empty path is refused (it would mean the current
    folder). ``split`` (``train`` or ``test``) only matters for the CIFAR-10 archive, which holds both.
    """
    param = param_name(what)
    path = input_path(path, param)
    if not exists(path, param):
        raise fail(param, path, "no such file or folder")
    if path.is_dir():
        try:
            os.listdir(path)
        except OSError as err:
            raise fail(param, path, f"cannot read the folder ({err.strerror or err})") from None
        if cifar_folder(path) is not None:
            return read_cifar10(path, split=split, what=what)
        return read_png_folder(path, param)
    name = path.name.lower()
    if name.endswith(".npz"):
        return read_npz(path, param)
    if name.endswith(".zip"):
        return read_dataset_zip(path, param)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return read_cifar10(path, split=split, what=what)
    if IDX_IMAGES.search(name):
        return read_idx(path, what=what)
    if name.endswith(".png"):
        return read_png_file(path, param)
    raise fail(param, path, "unknown format; expected a folder of PNGs, an .npz, an EDM dataset .zip, "
                            "the CIFAR-10 python archive or an idx3-ubyte file")
