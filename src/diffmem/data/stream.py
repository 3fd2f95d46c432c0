"""Training sets larger than memory: read in chunks, held as a memory-mapped array.

:func:`open_streamed` returns a :class:`StreamedSet` whose ``images`` is an (N, C, H, W) array that
numpy and :func:`diffmem.metrics.neighbors.knn` index like any other, but whose pages live on disk:

- ``.npy`` (uint8, or float32 in [-1, 1]; NCHW or NHW): opened with ``np.load(mmap_mode="c")``, no
  copy. Other dtypes and NHWC layouts are converted chunk by chunk into a cache file.
- ``.npz``: the image member is streamed out of the archive (compressed or not) into a ``.npy``
  cache file, then opened as above; ``labels`` is read whole (it is small).
- an EDM dataset ``.zip`` or a folder of PNGs: decoded ``chunk`` images at a time into a uint8
  ``.npy`` cache file (``np.lib.format.open_memmap``), with the labels of ``dataset.json``.
- anything else (CIFAR archive, idx, one PNG) is read whole by :func:`~diffmem.data.io.load_image_set`.

Chunks hold at most a quarter of ``memory_limit`` bytes (:func:`chunk_rows`), so reading never holds
more than that beside the page cache. The values are checked exactly as
:class:`~diffmem.data.imageset.ImageSet` checks them, one chunk at a time. Cache files live in
``cache_dir`` (a temporary folder by default) and are deleted by :meth:`StreamedSet.close`.
Progress (with ETA) goes to stderr when ``progress`` is true.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffmem.data.formats.common import exists, fail, input_path, labels_from_json, param_name
from diffmem.data.formats.png import _png_files, read_png, stack
from diffmem.data.imageset import check_labels
from diffmem.errors import InputError

DEFAULT_MEMORY_LIMIT = 2 * 2**30  # bytes, as the exact search's default


@dataclass
class StreamedSet:
    """An image set whose pixels may be memory-mapped: ``images`` (N, C, H, W) uint8 (0..255) or
    float32 (model space [-1, 1]), ``labels`` (N,) int64 or None, ``source`` the path read."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    cache: Path | None = None  # a cache file this set owns (deleted by close)
    streamed: bool = True  # False when the set was read whole into memory

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        return tuple(self.images.shape[1:])

    def chunks(self, rows: int):
        """Yield ``(start, block)`` with blocks of at most ``rows`` images, read from disk in turn."""
        for i in range(0, len(self.images), max(1, rows)):
            yield i, np.asarray(self.images[i:i + rows])

    def close(self) -> None:
        """Drop the mapping and delete the cache file (if this set made one)."""
        self.images = np.empty((0, *self.images.shape[1:]), self.images.dtype)
        if self.cache is not None:
            with contextlib.suppress(OSError):
                self.cache.unlink()
            self.cache = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def chunk_rows(shape: tuple, memory_limit: int, itemsize: int = 4) -> int:
    """Images per chunk so that one chunk, as ``itemsize``-byte values (float32: 4), takes at most a
    quarter of ``memory_limit`` bytes; at least 1."""
    return max(1, int(memory_limit // (4 * itemsize * math.prod(shape))))


def open_streamed(path, *, memory_limit: int = DEFAULT_MEMORY_LIMIT, cache_dir=None, what: str = "train",
                  progress: bool = False) -> StreamedSet:
    """Open the image set at ``path`` for chunked reading (see the module docstring for formats).

    Errors are :class:`~diffmem.errors.InputError` naming ``what`` (the parameter) and the file.
    """
    param = param_name(what)
    path = input_path(path, param)
    if not exists(path, param):
        raise fail(param, path, "no such file or folder")
    name = path.name.lower()
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir())
    reader = _Reader(path, param, memory_limit, cache_dir, progress)
    if path.is_dir() and not (path / "batches.meta").exists() and not (path / "data_batch_1").exists():
        return reader.pngs(*_folder_members(path, param))
    if name.endswith(".npy"):
        return reader.npy(path)
    if name.endswith(".npz"):
        return reader.npz()
    if name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
            raise fail(param, path, f"not a readable zip archive ({err})") from None
        with zf:  # closed once every member is decoded into the cache
            return reader.pngs(*_zip_members(zf, path, param))
    from diffmem.data.io import load_image_set

    whole = load_image_set(path, what=what)
    return StreamedSet(whole.images, whole.labels, str(path), streamed=False)


def _folder_members(folder: Path, param):
    """PNG files under ``folder`` (sorted by relative path), an opener, and dataset.json's bytes."""
    files = sorted(_png_files(folder, param), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise fail(param, folder, "folder contains no PNG images")
    names = [p.relative_to(folder).as_posix() for p in files]
    meta = folder / "dataset.json"
    return names, lambda n: folder / n, meta.read_bytes() if meta.is_file() else None


def _zip_members(zf: zipfile.ZipFile, path: Path, param):
    """PNG members of an open EDM zip (sorted, ``__MACOSX/`` ignored), an opener, and dataset.json's bytes."""
    try:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".png") and not n.startswith("__MACOSX/"))
        meta = zf.read("dataset.json") if "dataset.json" in zf.namelist() else None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
        raise fail(param, path, f"not a readable zip archive ({err})") from None
    if not names:
        raise fail(param, path, "zip contains no PNG images")
    return names, lambda n: io.BytesIO(zf.read(n)), meta


@dataclass
class _Reader:
    path: Path
    param: str | None
    memory_limit: int
    cache_dir: Path
    progress: bool

    def _cache_file(self) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".npy", dir=self.cache_dir)
        os.close(fd)
        return Path(name)

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="img", disable=not self.progress, leave=False)

    def pngs(self, names: list[str], opener, meta: bytes | None) -> StreamedSet:
        """Decode PNGs ``chunk_rows`` at a time into a uint8 cache file."""
        first = read_png(opener(names[0]), f"{self.path}/{names[0]}", self.param)
        cache = self._cache_file()
        try:
            out = np.lib.format.open_memmap(cache, mode="w+", dtype=np.uint8, shape=(len(names), *first.shape))
            rows = chunk_rows(first.shape, self.memory_limit, itemsize=1)
            with self._bar(len(names), f"reading {self.path.name}") as bar:
                for i0 in range(0, len(names), rows):
                    block = [(n, read_png(opener(n), f"{self.path}/{n}", self.param)) for n in names[i0:i0 + rows]]
                    out[i0:i0 + len(block)] = stack([(names[0], first), *block], self.param, self.path)[1:]
                    bar.update(len(block))
            out.flush()
            labels = labels_from_json(meta, names, self.param, f"{self.path}/dataset.json") if meta else None
        except BaseException:
            cache.unlink(missing_ok=True)
            raise
        del out
        return StreamedSet(np.load(cache, mmap_mode="c"), labels, str(self.path), cache)

    def npy(self, file: Path, cache: Path | None = None, labels=None) -> StreamedSet:
        """Map a ``.npy``; convert it into a cache file only when its dtype or layout needs it."""
        try:
            arr = np.load(file, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise fail(self.param, self.path, f"not a readable .npy ({err})") from None
        if arr.ndim == 3:
            arr = arr[:, None]
        if arr.ndim != 4 or arr.shape[0] == 0:
            raise fail(self.param, self.path, f"images must be (N,H,W), (N,C,H,W) or (N,H,W,C), got shape {arr.shape}")
        nhwc = arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3)
        if not nhwc and arr.shape[1] not in (1, 3):
            raise fail(self.param, self.path, f"cannot find a channel axis of size 1 or 3 in shape {arr.shape}")
        target = _target_dtype(arr.dtype, self.param, self.path)
        self._check_values(arr)
        if target == arr.dtype and not nhwc:
            return StreamedSet(arr, _labels(labels, len(arr), self.path, self.param), str(self.path), cache)
        converted = self._convert(arr, target, nhwc)
        if cache is not None:
            cache.unlink(missing_ok=True)
        return StreamedSet(np.load(converted, mmap_mode="c"), _labels(labels, len(arr), self.path, self.param),
                           str(self.path), converted)

    def _check_values(self, arr: np.ndarray) -> None:
        """Integers within 0..255, floats finite and within [-1, 1], one chunk at a time."""
        if arr.dtype == np.uint8:
            return
        rows = chunk_rows(arr.shape[1:], self.memory_limit, itemsize=max(4, arr.dtype.itemsize))
        integer = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
        with self._bar(len(arr), f"checking {self.path.name}") as bar:
            for i0 in range(0, len(arr), rows):
                block = np.asarray(arr[i0:i0 + rows])
                if not integer and not np.isfinite(block).all():
                    raise fail(self.param, self.path, "contains NaN or Inf")
                lo, hi = (0, 255) if integer else (-1.0, 1.0)
                if block.min() < lo or block.max() > hi:
                    kind = ("integer pixel values must lie in 0..255" if integer
                            else "float pixel values must lie in [-1, 1]")
                    raise fail(self.param, self.path, f"{kind}, found {block.min()}..{block.max()}")
                bar.update(len(block))

    def _convert(self, arr: np.ndarray, dtype, nhwc: bool) -> Path:
        shape = (arr.shape[0], arr.shape[3], arr.shape[1], arr.shape[2]) if nhwc else arr.shape
        cache = self._cache_file()
        try:
            out = np.lib.format.open_memmap(cache, mode="w+", dtype=dtype, shape=shape)
            rows = chunk_rows(shape[1:], self.memory_limit, itemsize=8)
            for i0 in range(0, len(arr), rows):
                block = np.asarray(arr[i0:i0 + rows])
                out[i0:i0 + len(block)] = block.transpose(0, 3, 1, 2) if nhwc else block
            out.flush()
        except BaseException:
            cache.unlink(missing_ok=True)
            raise
        return cache

    def npz(self) -> StreamedSet:
        """Stream the image member of an ``.npz`` out to a ``.npy`` cache file, then map it."""
        try:
            with zipfile.ZipFile(self.path) as zf:
                members = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                labels = None
                if "labels" in members:
                    with zf.open("labels.npy") as f:
                        labels = np.lib.format.read_array(f, allow_pickle=False)
                    members.remove("labels")
                key = "images" if "images" in members else (members[0] if len(members) == 1 else None)
                if key is None:
                    raise fail(self.param, self.path, f"no array named 'images' and not exactly one array "
                                                      f"(found {sorted(members)})")
                cache = self._cache_file()
                with zf.open(f"{key}.npy") as src, open(cache, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=min(self.memory_limit // 4, 64 * 2**20))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            if "cache" in locals():
                cache.unlink(missing_ok=True)
            raise fail(self.param, self.path, f"not a readable .npz ({err})") from None
        try:
            return self.npy(cache, cache, labels)
        except BaseException:
            cache.unlink(missing_ok=True)
            raise


def _target_dtype(dtype, param, path):
    """uint8 for integer pixels, float32 for floats; anything else is refused."""
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    raise fail(param, path, f"images must be uint8 or float in [-1, 1], got dtype {dtype}")


def _labels(labels, n: int, path, param) -> np.ndarray | None:
    if labels is None:
        return None
    try:
        labels = check_labels(labels, str(path))
    except InputError as err:
        raise InputError(err.detail, param=param) from None
    if len(labels) != n:
        raise fail(param, path, f"{len(labels)} labels for {n} images")
    return labels
