"""A training set described by its recipe: source, nested class-balanced size, resolution, blend, labels.

    make_dataset(DataSpec(source="digits", size=64, labels="none"))

is what ``diffmem data --source digits --size 64 --labels none`` writes, and what sweeps and EMM
runs train on: the first ``size/K`` images of each of the first K classes (so a smaller set is a
subset of a larger one), resized, a share of one class's images optionally taken from a second
source (``blend = "mnist:0.5"``, ``blend_class = 3``: :mod:`diffmem.data.blend`), then relabelled
(``none | true | random:C | unique``, the training-set forms of :mod:`diffmem.data.labels`). Every
field is checked on construction and an error names the field, which is also the flag of
``diffmem data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmem.data.blend import blend_images, check_blend, parse_blend, replaced_positions
from diffmem.data.imageset import ImageSet
from diffmem.data.sources import load_source
from diffmem.data.labels import DATA_FORMS, assign_labels, parse_labels
from diffmem.data.points import (MAX_DIM, POINT_SOURCES, PointCloud, check_point_source, is_point_source,
                                 is_points_file, make_points, read_points, take_points)
from diffmem.data.subsets import class_balanced_indices, class_balanced_subset, resize, select_classes, take
from diffmem.errors import InputError, check_number
from diffmem.rng import check_seed

MIN_RESOLUTION, MAX_RESOLUTION = 4, 256  # square output sizes, in pixels


@dataclass(frozen=True)
class DataSpec:
    """How to build a training set; validated on construction (errors name the field)."""

    source: str = "digits"  # a built-in source (digits, mnist, fashion-mnist, cifar10) or a file/folder
    size: int | None = None  # nested class-balanced subset of this many images (None: all)
    resolution: int | None = None  # square output size in pixels (None: the source's)
    labels: str | None = None  # none | true | random:C | unique (None: true if the source has labels)
    classes: int | None = None  # only the first K classes (then size must divide by K)
    seed: int = 0  # seed of random labels
    split: str = "train"  # train | test
    root: str | None = None  # where a source's files are (cifar10 archive, idx folder)
    dim: int | None = None  # point sources (toy2d, gaussian-mixture:K): the dimension d (None: 2)
    blend: str | None = None  # "SOURCE:α": a share α of class blend_class's images from SOURCE
    blend_class: int | None = None  # the class (label value) whose images blend replaces

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name in ("source", "root"):
            value = getattr(self, name)
            if value is None and name == "root":
                continue
            if isinstance(value, Path):
                fix(name, value := str(value))
            if not isinstance(value, str):
                raise InputError(f"must be a name or a path, got {value!r}", param=name)
            if not value.strip():
                raise InputError("an empty path is not a folder or file; leave it out or give one" if name == "root"
                                 else "an empty name is not a source; give a built-in name or a path", param=name)
        if self.size is not None:
            fix("size", check_number("size", self.size, lo=1, integer=True))
        if self.classes is not None:
            fix("classes", check_number("classes", self.classes, lo=1, integer=True))
        if self.size is not None and self.classes is not None and self.size % self.classes:
            raise InputError(f"{self.size} is not divisible by the number of classes {self.classes}", param="size")
        if self.resolution is not None:
            fix("resolution", check_number("resolution", self.resolution, lo=MIN_RESOLUTION, hi=MAX_RESOLUTION,
                                           integer=True))
        if self.labels is not None:
            parse_labels(self.labels, DATA_FORMS)
        fix("seed", check_seed(self.seed))
        if self.split not in ("train", "test"):
            raise InputError(f"expected train or test, got {self.split!r}", param="split")
        check_point_source(self.source)
        if self.dim is not None:
            fix("dim", check_number("dim", self.dim, lo=1, hi=MAX_DIM, integer=True))
            if not is_point_source(self.source):
                raise InputError(f"only point sources ({', '.join(POINT_SOURCES)}) have a dimension, not "
                                 f"{self.source!r}; leave it out", param="dim")
        fix("blend_class", check_blend(self.blend, self.blend_class, self.source))

    def replace(self, **changes) -> DataSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def label_mode(self, source_labeled: bool) -> str:
        """The labels the set gets: ``labels``, else ``true`` for a labeled source and ``none`` otherwise."""
        return self.labels or ("true" if source_labeled else "none")


def make_dataset(spec: DataSpec) -> ImageSet | PointCloud:
    """The training set ``spec`` describes (its ``source`` names the recipe, e.g. ``digits[size=64]``);
    a :class:`~diffmem.data.points.PointCloud` for a point source (:func:`make_points`) or a
    points ``.npz``."""
    if is_point_source(spec.source) or is_points_file(spec.source):
        return _points(spec)
    data = load_source(spec.source, split=spec.split, root=spec.root)
    data = _subset(data, spec.size, spec.classes)
    if spec.resolution is not None:
        data = resize(data, spec.resolution)
    if spec.blend is not None:
        data = blend_images(data, spec.blend, spec.blend_class, split=spec.split)
    labels = assign_labels(data.labels, spec.label_mode(data.labels is not None), spec.seed, n=len(data))
    name = spec.source if not Path(spec.source).exists() else str(Path(spec.source).resolve())
    recipe = ",".join(f"{k}={v}" for k, v in spec.to_dict().items() if k != "source" and v is not None)
    return ImageSet(data.images, labels, source=f"{name}[{recipe}]")


def blend_counts(spec: DataSpec) -> tuple[int, int]:
    """(images replaced, images of class ``blend_class``) in ``make_dataset(spec)``; (0, 0) without a blend."""
    if spec.blend is None:
        return 0, 0
    data = load_source(spec.source, split=spec.split, root=spec.root)
    if data.labels is None:
        return 0, 0
    members = int(np.sum(data.labels[_subset_index(data, spec.size, spec.classes)] == spec.blend_class))
    return int(replaced_positions(members, parse_blend(spec.blend)[1]).sum()), members


def _points(spec: DataSpec) -> PointCloud:
    """A point set: the first ``size`` points, labels ``none`` unless asked for (a mixture's labels
    are its components: ``labels = "true"``). Resolution, classes, blend, split and root do not apply."""
    for name in ("resolution", "classes", "root", "blend"):
        if getattr(spec, name) is not None:
            raise InputError(f"{spec.source}: a point cloud has no {name}; leave it out", param=name)
    if spec.split != "train":
        raise InputError(f"{spec.source}: a point cloud has only a train split", param="split")
    if is_point_source(spec.source):
        if spec.size is None:
            raise InputError(f"{spec.source}: a point source needs the number of points", param="size")
        cloud = make_points(spec.source, spec.size, spec.dim, spec.seed)
    else:
        cloud = take_points(read_points(spec.source, param="source"), spec.size)
    mode = spec.labels or "none"
    labels = assign_labels(cloud.labels, mode, spec.seed, n=len(cloud))
    recipe = ",".join(f"{k}={v}" for k, v in spec.to_dict().items() if k != "source" and v is not None)
    name = spec.source if is_point_source(spec.source) else str(Path(spec.source).resolve())
    return PointCloud(cloud.points, labels, source=f"{name}[{recipe}]")


def _subset(data: ImageSet, size: int | None, classes: int | None) -> ImageSet:
    """The nested class-balanced subset, or the first ``size`` images of an unlabeled source."""
    if size is not None:
        if data.labels is None and classes is None:
            if size > len(data):
                raise InputError(f"the source has only {len(data)} images, asked for {size}", param="size")
            return take(data, np.arange(size))
        # exact balance when classes is given; otherwise remainders go to the first classes
        return class_balanced_subset(data, size, classes, exact=classes is not None)
    if classes is not None:
        return select_classes(data, classes)
    return data


def _subset_index(data: ImageSet, size: int | None, classes: int | None) -> np.ndarray:
    """Indices into ``data`` of the images :func:`_subset` keeps (the same rules), sorted."""
    if size is not None:
        if data.labels is None and classes is None:
            return np.arange(min(size, len(data)))
        return class_balanced_indices(data.labels, size, classes, exact=classes is not None)
    if classes is not None:
        return np.flatnonzero(np.isin(data.labels, np.unique(data.labels)[:classes]))
    return np.arange(len(data))


def heldout_set(spec: DataSpec, num: int | None = None) -> ImageSet:
    """Images of ``spec``'s source that are NOT in ``make_dataset(spec)``: same classes, resolution
    and label handling, for held-out FD, loss gaps and membership tests.

    The pool is the rest of the same split (the first ``classes`` classes only, when given); when
    the training set takes the whole split, the other split of a source that has one (mnist,
    fashion-mnist, cifar10). ``num`` takes a nested class-balanced subset of the pool (remainders to
    the first classes; the first ``num`` of an unlabeled pool); None keeps all of it. Errors name
    ``heldout_size``. With a ``blend``, held-out images are the first source's only (its images
    that the blend replaced are neither in the training set nor held out).
    """
    if num is not None:
        num = check_number("heldout_size", num, lo=1, integer=True)
    data = load_source(spec.source, split=spec.split, root=spec.root)
    kept = np.zeros(len(data), dtype=bool)
    kept[_subset_index(data, spec.size, spec.classes)] = True
    in_classes = np.ones(len(data), dtype=bool) if spec.classes is None else \
        np.isin(data.labels, np.unique(data.labels)[:spec.classes])
    rest = np.flatnonzero(~kept & in_classes)
    where = f"the rest of the {spec.split} split"
    if len(rest):
        pool = take(data, rest)
    else:
        other = "test" if spec.split == "train" else "train"
        try:
            pool = load_source(spec.source, split=other, root=spec.root)
        except InputError:
            raise InputError(f"no held-out images: the training set uses every image of {spec.source}'s "
                             f"{spec.split} split; give a smaller size", param="heldout_size") from None
        if spec.classes is not None:
            pool = select_classes(pool, spec.classes)
        where = f"the {other} split"
    if num is not None:
        if num > len(pool):
            raise InputError(f"only {len(pool)} held-out images ({where}), asked for {num}", param="heldout_size")
        try:
            index = np.arange(num) if pool.labels is None else class_balanced_indices(pool.labels, num, exact=False)
        except InputError as err:
            raise InputError(f"{where}: {err.detail}", param="heldout_size") from None
        pool = take(pool, index)
    if spec.resolution is not None:
        pool = resize(pool, spec.resolution)
    labels = assign_labels(pool.labels, spec.label_mode(pool.labels is not None), spec.seed, n=len(pool))
    name = spec.source if not Path(spec.source).exists() else str(Path(spec.source).resolve())
    return ImageSet(pool.images, labels, source=f"{name}[heldout: {where}, not in size={spec.size}]")
