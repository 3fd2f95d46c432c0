"""Intra-class diversity: a share α of one class's images taken from a second source.

    DataSpec(source="digits", size=100, blend="mnist:0.5", blend_class=3)

is digits' nested class-balanced set of 100 images in which half of the ten 3s are MNIST 3s,
resized to the set's resolution (Gu et al. blend ImageNet dogs into CIFAR-10's dog class the same
way). The rule, for the images of class K in the set, in source order (position ``j = 0, 1, ...``):

    position j is replaced  iff  r(j + 1) > r(j),   r(n) = ⌊α n + ½⌋

so the first ``n`` images of the class hold exactly ``r(n)`` replaced ones (α·n rounded, halves
up), for every ``n``. The rule depends on the position only, never on |D|: the class's images in a
set of size |D| are a prefix of those in 2|D| (:mod:`diffmem.data.subsets`), hence so are the
replaced positions, and the ``k``-th replaced position always takes the ``k``-th image of class K
in the second source (source order, the same split). α is read exactly (``0.15`` is 3/20, not the
float nearest it), so ``r(n)`` has no rounding error. α = 0 changes nothing; α = 1 replaces the
whole class. Labels stay K, so the set stays class-balanced.

Second-source images are center-cropped and resized by :func:`~diffmem.data.subsets.resize` (the
code behind ``resolution``) straight to the set's final size, then matched to its channels (grey
repeated to RGB; RGB to grey by ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``) and pixel type
(uint8, or float in [-1, 1]).

Errors name ``blend`` (its syntax, α, the second source, its class K, its number of images) or
``blend_class`` (a bad class, one the set does not have, one given without ``blend``).
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from diffmem.data.imageset import MAX_LABEL, ImageSet, to_uint8
from diffmem.data.points import is_point_source, is_points_file
from diffmem.data.sources import load_source
from diffmem.data.subsets import resize, take
from diffmem.errors import InputError, check_number

__all__ = ["parse_blend", "check_blend", "replaced_positions", "blend_images"]

_BUILT_IN = ("digits", "mnist", "fashion-mnist")  # the image sources that need no root
_LUMA = np.array([0.299, 0.587, 0.114])


def parse_blend(blend: str) -> tuple[str, Fraction]:
    """``"SOURCE:α"`` → (SOURCE, α as an exact fraction in [0, 1]); else InputError naming ``blend``."""
    if not isinstance(blend, str):
        raise InputError(f"expected SOURCE:α (e.g. mnist:0.5), got {blend!r}", param="blend")
    source, colon, text = blend.rpartition(":")
    if not colon or not source.strip() or not text.strip():
        raise InputError(f"expected SOURCE:α (e.g. mnist:0.5), got {blend!r}", param="blend")
    try:
        alpha = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise InputError(f"α must be a number in [0, 1], got {text!r}", param="blend") from None
    if not 0 <= alpha <= 1:
        raise InputError(f"α must be in [0, 1], got {text.strip()}", param="blend")
    return source.strip(), alpha


def check_blend(blend: str | None, blend_class, source: str) -> int | None:
    """Check ``blend`` and ``blend_class`` as given to :class:`~diffmem.data.spec.DataSpec` (both or
    neither; a second source that is an image source other than ``source``); the class as an int."""
    if blend is None:
        if blend_class is not None:
            raise InputError("only with blend (SOURCE:α): which class to blend", param="blend_class")
        return None
    name, _ = parse_blend(blend)
    if blend_class is None:
        raise InputError(f"blend {blend!r} needs the class whose images it replaces", param="blend_class")
    blend_class = check_number("blend_class", blend_class, lo=0, hi=MAX_LABEL - 1, integer=True)
    if is_point_source(name) or is_points_file(name):
        raise InputError(f"{name}: a point cloud, not an image source", param="blend")
    if name == "cifar10":
        raise InputError("cifar10 needs its archive: give its path (cifar-10-python.tar.gz) as SOURCE", param="blend")
    if name not in _BUILT_IN and not Path(name).exists():
        raise InputError(f"{name}: unknown source; choose one of {', '.join(_BUILT_IN)} or give the path of "
                         f"an image set with labels", param="blend")
    if _same(name, source):
        raise InputError(f"{name} is the set's own source; blend images from another one", param="blend")
    return blend_class


def _same(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def replaced_positions(n: int, alpha: Fraction) -> np.ndarray:
    """Which of a class's first ``n`` images are replaced (bool, (n,)): position j iff
    ``r(j + 1) > r(j)`` with ``r(m) = ⌊α m + ½⌋``, in exact integer arithmetic."""
    alpha = Fraction(alpha)
    a, b = alpha.numerator, alpha.denominator
    r = [(2 * a * m + b) // (2 * b) for m in range(n + 1)]  # ⌊(2am + b) / 2b⌋ = ⌊α m + ½⌋
    return np.diff(np.array(r, dtype=np.int64)) > 0


def blend_images(data: ImageSet, blend: str, blend_class: int, *, split: str = "train") -> ImageSet:
    """``data`` with the share α of class ``blend_class``'s images replaced by that class's images
    from the second source of ``blend = "SOURCE:α"`` (see the module docstring for the rule)."""
    name, alpha = parse_blend(blend)
    if data.labels is None:
        raise InputError("needs a labeled set, and this one has no labels", param="blend_class")
    present = np.unique(data.labels)
    members = np.flatnonzero(data.labels == blend_class)
    if not len(members):
        raise InputError(f"class {blend_class} is not in the set (its classes: {', '.join(map(str, present))})",
                         param="blend_class")
    chosen = members[replaced_positions(len(members), alpha)]
    if not len(chosen):
        return data
    c, h, w = data.shape
    if h != w:
        raise InputError(f"the set's images are {h}x{w}; blending needs square images: give a resolution",
                         param="resolution")
    images = data.images.copy()
    images[chosen] = _match(_second_source(name, blend_class, len(chosen), split), h, c, images.dtype)
    return replace(data, images=images)


def _second_source(name: str, blend_class: int, count: int, split: str) -> ImageSet:
    """The first ``count`` images of class ``blend_class`` in the second source (errors name ``blend``)."""
    try:
        other = load_source(name, split=split)
    except InputError as err:
        raise InputError(f"{name}: {err.detail}", param="blend") from None
    if other.labels is None:
        raise InputError(f"{name} has no labels, so no class {blend_class}", param="blend")
    members = np.flatnonzero(other.labels == blend_class)
    if not len(members):
        raise InputError(f"{name} ({split} split) has no class {blend_class}", param="blend")
    if len(members) < count:
        raise InputError(f"{name} ({split} split) has only {len(members)} images of class {blend_class}, "
                         f"{count} needed", param="blend")
    return take(other, members[:count])


def _match(other: ImageSet, size: int, channels: int, dtype) -> np.ndarray:
    """``other``'s images at ``size`` x ``size`` (:func:`resize`), with ``channels`` channels and ``dtype``."""
    x = resize(other, size).images
    if x.shape[1] != channels:
        if channels == 3:
            x = np.repeat(x, 3, axis=1)
        else:
            luma = np.tensordot(_LUMA, x.astype(np.float64), axes=([0], [1]))[:, None]
            x = np.rint(luma).astype(np.uint8) if x.dtype == np.uint8 else luma.astype(np.float32)
    if x.dtype == dtype:
        return x
    return to_uint8(x) if dtype == np.uint8 else x.astype(np.float32) / 127.5 - 1.0
