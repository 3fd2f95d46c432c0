"""The CIFAR-10 python archive ``cifar-10-python.tar.gz`` or its folder ``cifar-10-batches-py``.

Only the batches asked for (and ``batches.meta`` for class names) are read, through an unpickler
that accepts nothing but what a CIFAR-10 batch holds.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from diffmem.data.formats.common import fail, finish, input_path, param_name
from diffmem.data.imageset import ImageSet
from diffmem.errors import InputError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_DIR = "cifar-10-batches-py"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays)."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # pickled by numpy 1.x
            module = "numpy._core." + module[len("numpy.core."):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def cifar_folder(folder: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder at or directly under ``folder``, if any."""
    for cand in (folder, folder / CIFAR_DIR):  # os.path.isfile: False for what cannot be looked at
        if os.path.isfile(cand / "data_batch_1") or os.path.isfile(cand / "test_batch"):
            return cand
    return None


def read_cifar10(path, *, split: str = "train", what: str = "root") -> ImageSet:
    """Read CIFAR-10 from ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py`` folder.

    ``split="train"`` concatenates ``data_batch_1..5`` (50 000 images), ``"test"`` reads
    ``test_batch``: (N, 3, 32, 32) uint8 with labels 0..9. ``what`` names the parameter the path
    came from in error messages.
    """
    param = param_name(what)
    path = input_path(path, param)
    if split not in ("train", "test"):
        raise InputError(f"must be 'train' or 'test', got {split!r}", param="split")
    members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not path.exists():
        raise fail(param, path, "no such file or folder")
    if path.is_dir():
        return _read_cifar_folder(path, members, param)
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise fail(param, path, f"not a readable tar archive ({err})") from None
    with tar:
        return _read_cifar_tar(tar, members, param, path)


def _read_cifar_folder(path: Path, members: list[str], param) -> ImageSet:
    folder = cifar_folder(path)
    if folder is None:
        raise fail(param, path, "not a CIFAR-10 folder (no data_batch_1 or test_batch inside)")

    @contextlib.contextmanager
    def member(name):
        with open(folder / name, "rb") as f:
            yield f

    have = {p.name for p in folder.iterdir()}
    missing = [m for m in members if m not in have]
    if missing:
        raise fail(param, path, f"missing {missing[0]}; not a complete CIFAR-10 python archive")
    return _cifar_batches(member, members, "batches.meta" in have, param, path)


def _read_cifar_tar(tar: tarfile.TarFile, members: list[str], param, path: Path) -> ImageSet:
    try:
        index = {Path(m.name).name: m for m in tar.getmembers()
                 if m.isfile() and Path(m.name).parent.name == CIFAR_DIR}
    except (tarfile.TarError, OSError, EOFError) as err:
        raise fail(param, path, f"corrupt tar archive ({err})") from None
    missing = [m for m in members if m not in index]
    if missing:
        raise fail(param, path, f"missing {CIFAR_DIR}/{missing[0]}; not a CIFAR-10 python archive")

    @contextlib.contextmanager
    def member(name):
        yield tar.extractfile(index[name])

    return _cifar_batches(member, members, "batches.meta" in index, param, path)


def _one_batch(member, name: str, param, path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(member, name, param, path)
    try:
        data = np.asarray(batch[b"data"])
        lab = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise fail(param, path, f"{name} lacks b'data' / b'labels'; not a CIFAR-10 python batch") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
        raise fail(param, path, f"{name} has data {data.dtype} {data.shape} and {len(lab)} labels; "
                                f"expected uint8 (N, 3072) and N labels")
    return data.reshape(-1, 3, 32, 32), lab  # rows hold the R, G, B planes, each 32x32 row-major


def _cifar_batches(member, members: list[str], has_meta: bool, param, path: Path) -> ImageSet:
    images, labels = zip(*(_one_batch(member, name, param, path) for name in members))
    names = CIFAR10_CLASSES
    if has_meta:
        meta = _unpickle(member, "batches.meta", param, path)
        raw = meta.get(b"label_names") if isinstance(meta, dict) else None
        if raw:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return finish(np.concatenate(images), np.concatenate(labels), param, path, path, list(names))


def _unpickle(member, name: str, param, path):
    try:
        with member(name) as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, tarfile.TarError, zlib.error) as err:
        raise fail(param, path, f"cannot read {name} ({err})") from None
