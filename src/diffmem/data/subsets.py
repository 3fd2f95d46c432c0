"""Training-set construction: class-balanced nested subsets and resolution.

Seed 001 takes subsets of size |D| as the first |D|/K images of each of the first K classes, so
the subset of size N is, class by class, a prefix of the subset of size 2N. Labels (true, random
in 0..C-1, unique) are :mod:`diffmem.data.labels`.

Errors name the parameter at fault (``size``, ``classes``, ``resolution``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from diffmem.data.imageset import ImageSet
from diffmem.errors import InputError, check_number

__all__ = [
    "class_balanced_indices",
    "class_balanced_subset",
    "select_classes",
    "take",
    "resize",
]


def take(imageset: ImageSet, index: np.ndarray) -> ImageSet:
    """The images (and labels) of ``imageset`` at ``index``."""
    labels = None if imageset.labels is None else imageset.labels[index]
    return replace(imageset, images=imageset.images[index], labels=labels)


def _first_classes(labels: np.ndarray | None, classes: int | None, param: str) -> np.ndarray:
    if labels is None:
        raise InputError("needs a labeled source, and this one has no labels", param=param)
    present = np.unique(labels)
    if classes is None:
        return present
    classes = check_number("classes", classes, lo=1, integer=True)
    if classes > len(present):
        raise InputError(f"the source has only {len(present)} classes, asked for {classes}", param="classes")
    return present[:classes]


def class_balanced_indices(labels: np.ndarray | None, size: int, classes: int | None = None, *,
                           exact: bool = True) -> np.ndarray:
    """Indices of the first ``size / K`` images of each of the first ``K`` classes, sorted.

    "First classes" are the ``K`` smallest label values (all classes when ``classes`` is None);
    "first images" are in source order, so subsets nest. ``size`` must be divisible by ``K``
    unless ``exact=False``: then the first ``size mod K`` classes get one image more, which still
    nests (class ``r`` gets as many images as there are ``i < size`` with ``i mod K = r``).
    """
    size = check_number("size", size, lo=0, lo_open=True, integer=True)
    kept = _first_classes(labels, classes, "size")
    per_class, extra = divmod(size, len(kept))
    if extra and exact:
        raise InputError(f"{size} is not divisible by the number of classes {len(kept)}", param="size")
    chosen = []
    for rank, c in enumerate(kept):
        members = np.flatnonzero(labels == c)
        quota = per_class + (rank < extra)
        if len(members) < quota:
            raise InputError(f"class {c} has only {len(members)} images, {quota} needed", param="size")
        chosen.append(members[:quota])
    return np.sort(np.concatenate(chosen))


def class_balanced_subset(imageset: ImageSet, size: int, classes: int | None = None, *,
                          exact: bool = True) -> ImageSet:
    """The class-balanced nested subset of ``size`` images (see :func:`class_balanced_indices`)."""
    return take(imageset, class_balanced_indices(imageset.labels, size, classes, exact=exact))


def select_classes(imageset: ImageSet, classes: int) -> ImageSet:
    """All images of the first ``classes`` classes (the smallest label values), in source order."""
    kept = _first_classes(imageset.labels, classes, "classes")
    return take(imageset, np.flatnonzero(np.isin(imageset.labels, kept)))


def resize(imageset: ImageSet, resolution: int) -> ImageSet:
    """Images resized to ``resolution`` x ``resolution`` (non-square images are center-cropped first).

    Integer downsampling factors average ``f x f`` boxes (area resampling, rounded back to uint8);
    every other size change, upsampling included, uses PIL's bicubic filter (antialiased when
    shrinking). Float images stay float and are clipped back into [-1, 1].
    """
    resolution = check_number("resolution", resolution, lo=1, integer=True)
    x = imageset.images
    h, w = x.shape[2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[:, :, top:top + s, left:left + s]
    size = x.shape[2]
    if size == resolution:
        return replace(imageset, images=np.ascontiguousarray(x))
    if size % resolution == 0:
        f = size // resolution
        n, c = x.shape[:2]
        boxes = x.reshape(n, c, resolution, f, resolution, f).mean(axis=(3, 5), dtype=np.float64)
        out = np.rint(boxes).astype(np.uint8) if x.dtype == np.uint8 else boxes.astype(np.float32)
        return replace(imageset, images=out)
    return replace(imageset, images=_pil_bicubic(x, resolution))


def _pil_bicubic(x: np.ndarray, resolution: int) -> np.ndarray:
    size, bicubic = (resolution, resolution), Image.Resampling.BICUBIC
    if x.dtype == np.uint8:  # PIL resamples L and RGB images with rounding and clipping to 0..255
        if x.shape[1] == 1:
            out = [np.asarray(Image.fromarray(img[0]).resize(size, bicubic))[None] for img in x]
        else:
            out = [np.asarray(Image.fromarray(img.transpose(1, 2, 0)).resize(size, bicubic)).transpose(2, 0, 1)
                   for img in x]
        return np.ascontiguousarray(np.stack(out))
    out = [[np.asarray(Image.fromarray(ch.astype(np.float32), mode="F").resize(size, bicubic)) for ch in img]
           for img in x]
    return np.clip(np.array(out, dtype=np.float32), -1.0, 1.0)
