"""Point clouds: low-dimensional training sets that flow through the same functions as images.

A :class:`PointCloud` is the image set's twin for data that are vectors, not pictures: float32
``(N, d)`` points, unbounded (no ``[-1, 1]`` range, never quantized to uint8), optional labels. It
offers what training, sampling and the metrics read from an :class:`~diffmem.data.ImageSet`:
``len``, ``.shape == (d,)``, ``to_model()``, ``num_classes``, ``labels``, ``source`` (and
``images``, the same array, so fingerprints and batches read it unchanged).

Built-in point sources (:func:`make_points`), all seeded and nested (the first ``m`` points of a
draw of ``n > m`` equal the draw of ``m``):

=======================  ==========================================================================
``toy2d``                N(0, I₂): seed 002's 2-D toy (Baptista et al.: N = 20 points).
``gaussian-mixture:K``   K unit-variance Gaussians in ``dim`` dimensions (:func:`gaussian_mixture`);
                         K = 2 is seed 003's ±μ mixture with μ = 4·e₁.
=======================  ==========================================================================

On disk a point cloud is an ``.npz`` holding the array ``points`` (N, d) (and optional ``labels``
(N,)); :func:`load_data` reads such a file as a PointCloud and anything else as
:func:`~diffmem.data.io.load_image_set` does.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmem.data.formats.common import atomic_file, fail, param_name
from diffmem.data.imageset import ImageSet, check_labels
from diffmem.data.io import load_image_set
from diffmem.data.sources import gaussian_mixture, parse_gaussian_mixture
from diffmem.errors import InputError, check_number

POINTS_KEY = "points"  # the .npz array holding (N, d) points
POINT_SOURCES = ("toy2d", "gaussian-mixture:K")
MAX_DIM = 1 << 16  # far beyond any toy; keeps a typo such as --dim 10**9 from allocating terabytes


@dataclass
class PointCloud:
    """``points`` float32 (N, d), finite, any range; ``labels`` (N,) int64 class indices or None."""

    points: np.ndarray
    labels: np.ndarray | None = None
    source: str = "<memory>"
    label_names: list[str] | None = None

    def __post_init__(self):
        points = np.asarray(self.points)
        if points.ndim != 2:
            raise InputError(f"{self.source}: expected points of shape (N, d), got {points.shape}")
        if len(points) == 0 or points.shape[1] == 0:
            raise InputError(f"{self.source}: contains no points (shape {points.shape})")
        if not (np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)):
            raise InputError(f"{self.source}: points must be numbers, got {points.dtype}")
        if not np.isfinite(points).all():
            raise InputError(f"{self.source}: points contain NaN or Inf")
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        if self.labels is not None:
            self.labels = check_labels(self.labels, self.source)
            if len(self.labels) != len(self.points):
                raise InputError(f"{self.source}: {len(self.labels)} labels for {len(self.points)} points")

    def __len__(self) -> int:
        return len(self.points)

    @property
    def shape(self) -> tuple[int]:
        """Per-point shape ``(d,)``."""
        return (int(self.points.shape[1]),)

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    @property
    def images(self) -> np.ndarray:
        """The points themselves (the name image sets use, so fingerprints and batches read both)."""
        return self.points

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def to_model(self) -> np.ndarray:
        """The points as float32 (N, d): model space is data space for point clouds."""
        return self.points


def is_point_source(name) -> bool:
    """Whether ``name`` is a built-in point source (``toy2d``, ``gaussian-mixture[:K]``)."""
    return isinstance(name, str) and (name == "toy2d" or name.startswith("gaussian-mixture"))


def check_point_source(name: str) -> None:
    """Refuse a malformed point-source name (``gaussian-mixture:x``), naming ``source``."""
    if is_point_source(name) and name != "toy2d":
        parse_gaussian_mixture(name)


def make_points(source: str, n: int, dim: int | None = None, seed: int = 0) -> PointCloud:
    """``n`` points of a built-in point source (see the module docstring), with component labels for
    a mixture (None for ``toy2d``). ``dim`` defaults to 2; ``toy2d`` is 2-D only. Errors name
    ``source``, ``size`` or ``dim``."""
    n = check_number("size", n, lo=1, hi=10**8, integer=True)
    if dim is not None:
        dim = check_number("dim", dim, lo=1, hi=MAX_DIM, integer=True)
    if source == "toy2d":
        if dim not in (None, 2):
            raise InputError(f"toy2d is 2-D, got {dim}; use gaussian-mixture:1 for N(0, I_d)", param="dim")
        points, _ = gaussian_mixture(n, 2, 1, seed)
        return PointCloud(points, None, source=f"toy2d[size={n},seed={seed}]")
    k = parse_gaussian_mixture(source)
    points, labels = gaussian_mixture(n, dim or 2, k, seed)
    return PointCloud(points, labels, source=f"{source}[size={n},dim={dim or 2},seed={seed}]")


def is_points_file(path) -> bool:
    """Whether ``path`` is an ``.npz`` holding ``points`` (False for anything unreadable: the image
    readers then report the problem with the path)."""
    try:
        return str(path).lower().endswith(".npz") and Path(path).is_file() and has_points(Path(path))
    except OSError:
        return False


def has_points(path: Path) -> bool:
    """Whether the ``.npz`` at ``path`` holds a ``points`` array (False when it cannot be read)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return POINTS_KEY in npz.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def load_data(path, *, what: str = "train", split: str = "train") -> ImageSet | PointCloud:
    """A training or generated set from disk: a point cloud for an ``.npz`` holding ``points``,
    else an image set (:func:`~diffmem.data.io.load_image_set`, with the same ``what`` and ``split``)."""
    if is_points_file(path):
        return read_points(path, param=param_name(what))
    return load_image_set(path, what=what, split=split)


def read_points(path, param: str | None = None) -> PointCloud:
    """The point cloud in an ``.npz`` (array ``points`` (N, d), optional ``labels`` (N,)); errors
    name ``param`` and the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise fail(param, path, f"not a readable .npz ({err})") from None
    if POINTS_KEY not in arrays:
        raise fail(param, path, f"no array named '{POINTS_KEY}' (found {sorted(arrays)})")
    labels = arrays.get("labels")
    if labels is not None and (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)):
        raise fail(param, path, f"'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    try:
        return PointCloud(arrays[POINTS_KEY], labels, source=str(path))
    except InputError as err:
        raise fail(param, path, str(err).removeprefix(f"{path}: ")) from None


def save_points(path, points, labels=None, *, overwrite: bool = False, param: str | None = None) -> Path:
    """Write a :class:`PointCloud` (or an (N, d) array) as an ``.npz`` with ``points`` and optional
    ``labels``, atomically; refuses an existing file unless ``overwrite``."""
    if isinstance(points, PointCloud):
        points, labels = points.points, points.labels if labels is None else labels
    arrays = {POINTS_KEY: np.asarray(points, dtype=np.float32)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    with atomic_file(path, overwrite, param) as f:
        np.savez(f, **arrays)
    return Path(path)


def take_points(cloud: PointCloud, size: int | None) -> PointCloud:
    """The first ``size`` points (all when None): the nested subset of a point cloud."""
    if size is None:
        return cloud
    if size > len(cloud):
        raise InputError(f"the source has only {len(cloud)} points, asked for {size}", param="size")
    labels = None if cloud.labels is None else cloud.labels[:size]
    return PointCloud(cloud.points[:size], labels, source=cloud.source, label_names=cloud.label_names)
