"""``.npz`` image sets: array ``images`` (else the only array other than ``labels``), optional
``labels``; uint8 (or any integer type within 0..255) NCHW, NHWC or NHW, or float in ``[-1, 1]``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from diffmem.data.formats.common import atomic_file, fail, finish
from diffmem.data.imageset import ImageSet


def read_npz(path: Path, param: str | None) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise fail(param, path, f"not a readable .npz ({err})") from None
    labels = arrays.pop("labels", None)
    if "images" in arrays:
        images = arrays["images"]
    elif len(arrays) == 1:
        images = next(iter(arrays.values()))
    else:
        raise fail(param, path, f"no array named 'images' and not exactly one array (found {sorted(arrays)})")
    images = to_nchw(images, param, path)
    if labels is not None and (not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1):
        raise fail(param, path, f"'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return finish(images, labels, param, path, path)


def _channels_first(images: np.ndarray, param, where) -> np.ndarray:
    """(N, H, W) / (N, C, H, W) / (N, H, W, C) to (N, C, H, W): the channel axis is axis 1 if it has
    1 or 3 entries, else axis 3; NCHW wins when both could be."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise fail(param, where, f"images must be (N,H,W), (N,C,H,W) or (N,H,W,C), got shape {images.shape}")
    if images.shape[1] in (1, 3):
        return images
    if images.shape[3] not in (1, 3):
        raise fail(param, where, f"cannot find a channel axis of size 1 or 3 in shape {images.shape}")
    return images.transpose(0, 3, 1, 2)


def to_nchw(images: np.ndarray, param: str | None, where) -> np.ndarray:
    """An image array as (N, C, H, W) uint8 (integers in 0..255) or float32 in [-1, 1]."""
    if images.size == 0:
        raise fail(param, where, f"image array is empty (shape {images.shape})")
    images = _channels_first(images, param, where)
    if np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        if images.dtype != np.uint8:
            lo, hi = int(images.min()), int(images.max())
            if lo < 0 or hi > 255:
                raise fail(param, where, f"integer pixel values must lie in 0..255, found {lo}..{hi}")
        return np.ascontiguousarray(images, dtype=np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise fail(param, where, "contains NaN or Inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.0 or hi > 1.0:
            raise fail(param, where, f"float pixel values must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}]")
        return np.ascontiguousarray(images, dtype=np.float32)
    raise fail(param, where, f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")


def save_npz(path, images, labels=None, *, overwrite: bool = False, param: str | None = None) -> Path:
    """Save ``images`` (an ImageSet or array, stored as given) and optional ``labels`` (N,) to an
    ``.npz``, atomically, with the mode the umask gives new files. Refuses an existing file unless
    ``overwrite``; errors name ``param`` and the file."""
    if isinstance(images, ImageSet):
        images, labels = images.images, images.labels if labels is None else labels
    arrays = {"images": np.asarray(images)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    with atomic_file(path, overwrite, param) as f:
        np.savez(f, **arrays)
    return Path(path)
