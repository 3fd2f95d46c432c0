"""MNIST-family idx files: ``*-idx3-ubyte`` images (optionally ``.gz``), with labels from the
matching ``*-idx1-ubyte`` file when it sits beside them."""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from diffmem.data.formats.common import fail, finish, input_path, param_name
from diffmem.data.imageset import ImageSet

IDX_IMAGES = re.compile(r"idx3[-_.]ubyte(\.gz)?$")
_IDX_UBYTE = 0x08


def _read_idx_array(path: Path, ndim: int, param) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions (magic ``0x0000 08 ndim``)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise fail(param, path, f"cannot read ({err})") from None
    if len(raw) < 4 + 4 * ndim:
        raise fail(param, path, f"too short for an idx file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != (_IDX_UBYTE << 8 | ndim):
        raise fail(param, path, f"bad idx magic number 0x{magic:08x}; expected 0x{_IDX_UBYTE << 8 | ndim:08x}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise fail(param, path, f"holds {body.size} bytes of data but its header says {dims}")
    return body.reshape(dims)


def _labels_beside(path: Path) -> Path | None:
    """The idx1 labels file matching an idx3 images file, if it exists."""
    stem = re.sub(r"\.gz$", "", path.name, flags=re.I)
    stem = stem.replace("images", "labels").replace("idx3", "idx1")
    return next((c for c in (path.with_name(stem), path.with_name(stem + ".gz")) if c.is_file()), None)


def read_idx(path, *, labels=None, what: str = "train") -> ImageSet:
    """Read an idx3-ubyte image file as (N, 1, H, W) uint8; labels from ``labels`` or the matching
    idx1-ubyte file beside it. ``what`` names the parameter the path came from in errors."""
    param = param_name(what)
    path = input_path(path, param)
    if not path.is_file():
        raise fail(param, path, "no such file")
    images = _read_idx_array(path, 3, param)
    if images.shape[0] == 0:
        raise fail(param, path, "contains no images")
    labels = _labels_beside(path) if labels is None else Path(labels)
    lab = None
    if labels is not None:
        lab = _read_idx_array(labels, 1, param)
        if len(lab) != len(images):
            raise fail(param, labels, f"{len(lab)} labels for {len(images)} images in {path.name}")
    return finish(images[:, None], lab, param, path, path)
