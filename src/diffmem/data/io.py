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

PNG policy: grayscale (``L``, ``1``) gives one channel and RGB three; palette images are expanded.
An alpha channel is dropped when it is fully opaque and is an error otherwise (there is no
background to composite onto). One set never mixes channel counts or sizes: that is an error.

Every problem raises :class:`~diffmem.errors.InputError` whose message starts with the flag
(``what``) and the file at fault. Writers are atomic (temporary file, then ``os.replace``) and
refuse to replace existing output unless told to.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import re
import struct
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from diffmem.atomic import atomic_path
from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.errors import InputError

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

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR_DIR = "cifar-10-batches-py"
_IDX_IMAGES = re.compile(r"idx3[-_.]ubyte(\.gz)?$")
_IDX_UBYTE = 0x08


def _where(what: str, path) -> str:
    return f"{what} {path}" if what else str(path)


# ---------------------------------------------------------------------------------------------
# Reading.


def load_image_set(path: str | Path, *, what: str = "--train", split: str = "train") -> ImageSet:
    """Read an image set from ``path`` (see the module docstring for the formats).

    ``what`` is the flag the path came from; error messages start with ``"{what} {path}:"``.
    ``split`` (``train`` or ``test``) only matters for the CIFAR-10 archive, which holds both.
    """
    path = Path(path)
    where = _where(what, path)
    if not path.exists():
        raise InputError(f"{where}: no such file or folder")
    if path.is_dir():
        if _cifar_folder(path) is not None:
            return read_cifar10(path, split=split, what=what)
        return _read_png_folder(path, where)
    name = path.name.lower()
    if name.endswith(".npz"):
        return _read_npz(path, where)
    if name.endswith(".zip"):
        return _read_dataset_zip(path, where)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return read_cifar10(path, split=split, what=what)
    if _IDX_IMAGES.search(name):
        return read_idx(path, what=what)
    if name.endswith(".png"):
        return _finish(read_png(path, where)[None], None, where, None, path)
    raise InputError(
        f"{where}: unknown format; expected a folder of PNGs, an .npz, an EDM dataset .zip, "
        f"the CIFAR-10 python archive or an idx3-ubyte file"
    )


def _finish(images: np.ndarray, labels, where: str, label_names, source: Path) -> ImageSet:
    """Build the ImageSet (``source`` = the path), re-raising its validation errors as ``where``."""
    try:
        return ImageSet(images, labels, source=str(source), label_names=label_names)
    except InputError as err:
        msg = str(err)
        msg = msg[len(str(source)):] if msg.startswith(str(source)) else f": {msg}"
        raise InputError(f"{where}{msg}") from None


def read_png(file, where: str) -> np.ndarray:
    """Decode one PNG (a path or a binary file object) to a CHW uint8 array; ``where`` names it."""
    try:
        with Image.open(file) as img:
            img.load()
            if img.format != "PNG":
                raise InputError(f"{where}: not a PNG (found {img.format})")
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode == "1":
                img = img.convert("L")
            if img.mode not in ("L", "LA", "RGB", "RGBA"):
                raise InputError(f"{where}: unsupported PNG mode {img.mode}; use 8-bit grayscale or RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{where}: not a readable PNG ({err})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] in (2, 4):  # LA / RGBA: drop alpha only if it is fully opaque
        if (arr[:, :, -1] != 255).any():
            raise InputError(f"{where}: PNG has a transparent alpha channel; save it as grayscale or RGB")
        arr = arr[:, :, :-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _stack(named_images: list[tuple[str, np.ndarray]], where: str) -> np.ndarray:
    """Stack CHW arrays, refusing mixed channel counts or sizes (naming the first odd PNG)."""
    first_name, first = named_images[0]
    for name, img in named_images[1:]:
        if img.shape[0] != first.shape[0]:
            kinds = {1: "grayscale", 3: "RGB"}
            raise InputError(
                f"{where}: mixed channel counts: {name} is {kinds[img.shape[0]]} but {first_name} is "
                f"{kinds[first.shape[0]]}; convert them to one kind"
            )
        if img.shape[1:] != first.shape[1:]:
            raise InputError(
                f"{where}: mixed image sizes: {name} is {img.shape[2]}x{img.shape[1]} but {first_name} is "
                f"{first.shape[2]}x{first.shape[1]}"
            )
    return np.stack([img for _, img in named_images])


def _labels_from_json(text: bytes, names: list[str], where: str):
    """Labels from EDM's ``dataset.json`` (``{"labels": [[name, int], ...] | null}``), in ``names`` order."""
    try:
        meta = json.loads(text)
        entries = meta.get("labels") if isinstance(meta, dict) else meta["labels"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{where}: dataset.json is not valid ({err})") from None
    if entries is None:
        return None
    try:
        table = {str(name).replace("\\", "/"): int(label) for name, label in entries}
    except (TypeError, ValueError):
        raise InputError(f'{where}: dataset.json "labels" must be a list of [name, int] pairs') from None
    missing = [name for name in names if name not in table]
    if missing:
        raise InputError(f"{where}: dataset.json has no label for {missing[0]} ({len(missing)} images unlabeled)")
    return np.array([table[name] for name in names], dtype=np.int64)


def _read_png_folder(folder: Path, where: str) -> ImageSet:
    files = sorted((p for p in folder.rglob("*") if p.suffix.lower() == ".png" and p.is_file()),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise InputError(f"{where}: folder contains no PNG images")
    rel = [p.relative_to(folder).as_posix() for p in files]
    images = _stack([(r, read_png(p, f"{where}/{r}")) for r, p in zip(rel, files)], where)
    meta = folder / "dataset.json"
    labels = _labels_from_json(meta.read_bytes(), rel, f"{where}/dataset.json") if meta.is_file() else None
    return _finish(images, labels, where, None, folder)


def _read_dataset_zip(path: Path, where: str) -> ImageSet:
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(".png") and not n.startswith("__MACOSX/"))
            if not names:
                raise InputError(f"{where}: zip contains no PNG images")
            images = _stack([(n, read_png(io.BytesIO(zf.read(n)), f"{where}:{n}")) for n in names], where)
            labels = None
            if "dataset.json" in zf.namelist():
                labels = _labels_from_json(zf.read("dataset.json"), names, f"{where}:dataset.json")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
        raise InputError(f"{where}: not a readable zip archive ({err})") from None
    return _finish(images, labels, where, None, path)


def _read_npz(path: Path, where: str) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{where}: not a readable .npz ({err})") from None
    labels = arrays.pop("labels", None)
    if "images" in arrays:
        images = arrays["images"]
    elif len(arrays) == 1:
        images = next(iter(arrays.values()))
    else:
        raise InputError(f"{where}: no array named 'images' and not exactly one array (found {sorted(arrays)})")
    images = _to_nchw(images, where)
    if labels is not None and (not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1):
        raise InputError(f"{where}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return _finish(images, labels, where, None, path)


def _to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    """NHW / NCHW / NHWC array to NCHW with dtype uint8 (integers in 0..255) or float32 in [-1, 1].

    The channel axis is axis 1 if it has 1 or 3 entries, else axis 3; NCHW wins when both could be.
    """
    if images.size == 0:
        raise InputError(f"{where}: image array is empty (shape {images.shape})")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        if images.shape[1] not in (1, 3):
            if images.shape[3] not in (1, 3):
                raise InputError(f"{where}: cannot find a channel axis of size 1 or 3 in shape {images.shape}")
            images = images.transpose(0, 3, 1, 2)
    else:
        raise InputError(f"{where}: images must be (N,H,W), (N,C,H,W) or (N,H,W,C), got shape {images.shape}")
    if np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        if images.dtype != np.uint8:
            lo, hi = int(images.min()), int(images.max())
            if lo < 0 or hi > 255:
                raise InputError(f"{where}: integer pixel values must lie in 0..255, found {lo}..{hi}")
        return np.ascontiguousarray(images, dtype=np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise InputError(f"{where}: contains NaN or Inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.0 or hi > 1.0:
            raise InputError(f"{where}: float pixel values must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}]")
        return np.ascontiguousarray(images, dtype=np.float32)
    raise InputError(f"{where}: images must be uint8 or float in [-1, 1], got dtype {images.dtype}")


# CIFAR-10 -------------------------------------------------------------------------------------


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


def _cifar_folder(folder: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder at or directly under ``folder``, if any."""
    for cand in (folder, folder / _CIFAR_DIR):
        if (cand / "data_batch_1").is_file() or (cand / "test_batch").is_file():
            return cand
    return None


def read_cifar10(path: str | Path, *, split: str = "train", what: str = "--root") -> ImageSet:
    """Read CIFAR-10 from ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py`` folder.

    ``split="train"`` concatenates ``data_batch_1..5`` (50 000 images), ``"test"`` reads
    ``test_batch``. Only those members (and ``batches.meta`` for class names) are read.
    """
    path = Path(path)
    where = _where(what, path)
    if split not in ("train", "test"):
        raise InputError(f"--split: must be 'train' or 'test', got {split!r}")
    members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not path.exists():
        raise InputError(f"{where}: no such file or folder")

    if path.is_dir():
        folder = _cifar_folder(path)
        if folder is None:
            raise InputError(f"{where}: not a CIFAR-10 folder (no data_batch_1 or test_batch inside)")

        @contextlib.contextmanager
        def member(name):
            with open(folder / name, "rb") as f:
                yield f

        have = {p.name for p in folder.iterdir()}
    else:
        try:
            tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise InputError(f"{where}: not a readable tar archive ({err})") from None
        with tar:
            return _read_cifar_tar(tar, members, where, path)

    missing = [m for m in members if m not in have]
    if missing:
        raise InputError(f"{where}: missing {missing[0]}; not a complete CIFAR-10 python archive")
    return _cifar_batches(member, members, "batches.meta" in have, where, path)


def _read_cifar_tar(tar: tarfile.TarFile, members: list[str], where: str, path: Path) -> ImageSet:
    try:
        index = {Path(m.name).name: m for m in tar.getmembers()
                 if m.isfile() and Path(m.name).parent.name == _CIFAR_DIR}
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InputError(f"{where}: corrupt tar archive ({err})") from None
    missing = [m for m in members if m not in index]
    if missing:
        raise InputError(f"{where}: missing {_CIFAR_DIR}/{missing[0]}; not a CIFAR-10 python archive")

    @contextlib.contextmanager
    def member(name):
        yield tar.extractfile(index[name])

    return _cifar_batches(member, members, "batches.meta" in index, where, path)


def _cifar_batches(member, members: list[str], has_meta: bool, where: str, path: Path) -> ImageSet:
    images, labels = [], []
    for name in members:
        batch = _unpickle(member, name, where)
        try:
            data = np.asarray(batch[b"data"])
            lab = np.asarray(batch[b"labels"], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: {name} lacks b'data' / b'labels'; not a CIFAR-10 python batch") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
            raise InputError(f"{where}: {name} has data {data.dtype} {data.shape} and {len(lab)} labels; "
                             f"expected uint8 (N, 3072) and N labels")
        images.append(data.reshape(-1, 3, 32, 32))  # rows hold the R, G, B planes, each 32x32 row-major
        labels.append(lab)
    names = CIFAR10_CLASSES
    if has_meta:
        meta = _unpickle(member, "batches.meta", where)
        raw = meta.get(b"label_names") if isinstance(meta, dict) else None
        if raw:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return _finish(np.concatenate(images), np.concatenate(labels), where, list(names), path)


def _unpickle(member, name: str, where: str):
    try:
        with member(name) as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, tarfile.TarError, zlib.error) as err:
        raise InputError(f"{where}: cannot read {name} ({err})") from None


# idx (MNIST family) ---------------------------------------------------------------------------


def _read_idx_array(path: Path, ndim: int, where: str) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions (magic ``0x0000 08 ndim``)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"{where}: cannot read ({err})") from None
    if len(raw) < 4 + 4 * ndim:
        raise InputError(f"{where}: too short for an idx file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != (_IDX_UBYTE << 8 | ndim):
        raise InputError(f"{where}: bad idx magic number 0x{magic:08x}; expected 0x{_IDX_UBYTE << 8 | ndim:08x}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{where}: holds {body.size} bytes of data but its header says {dims}")
    return body.reshape(dims)


def read_idx(path: str | Path, *, labels: str | Path | None = None, what: str = "--train") -> ImageSet:
    """Read an idx3-ubyte image file; labels from ``labels`` or the matching idx1-ubyte file beside it."""
    path = Path(path)
    where = _where(what, path)
    if not path.is_file():
        raise InputError(f"{where}: no such file")
    images = _read_idx_array(path, 3, where)
    if images.shape[0] == 0:
        raise InputError(f"{where}: contains no images")
    if labels is None:
        stem = re.sub(r"\.gz$", "", path.name, flags=re.I)
        stem = stem.replace("images", "labels").replace("idx3", "idx1")
        labels = next((c for c in (path.with_name(stem), path.with_name(stem + ".gz")) if c.is_file()), None)
    lab = None
    if labels is not None:
        lab = _read_idx_array(Path(labels), 1, _where(what, labels))
        if len(lab) != len(images):
            raise InputError(f"{_where(what, labels)}: {len(lab)} labels for {len(images)} images in {path.name}")
    return _finish(images[:, None], lab, where, None, path)


# ---------------------------------------------------------------------------------------------
# Writing.


def _as_uint8_nchw(images, labels):
    """Accept an ImageSet or an NCHW array (uint8, or float in model space) and give uint8 + labels."""
    if isinstance(images, ImageSet):
        return images.to_uint8(), images.labels if labels is None else labels
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected NCHW images with 1 or 3 channels, got shape {images.shape}")
    if images.dtype != np.uint8:
        images = to_uint8(images)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
    return images, labels


def _png_bytes(chw: np.ndarray) -> bytes:
    img = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def _atomic_file(path: Path, overwrite: bool):
    """Yield a binary file that atomically becomes ``path`` (:func:`diffmem.atomic.atomic_path`),
    refusing an existing ``path`` unless ``overwrite``; write errors become InputErrors naming it."""
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; refusing to overwrite it")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(f"{path}: cannot write, {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            yield f
    except OSError as err:
        raise InputError(f"{path}: cannot write ({err.strerror or err})") from None


def write_dataset_zip(path: str | Path, images, labels=None, *, overwrite: bool = False) -> Path:
    """Write an EDM-style dataset zip: ``00000/img00000000.png``, ... and ``dataset.json``.

    ``images`` is an ImageSet or NCHW uint8 (float model-space images are quantized). ``dataset.json``
    holds ``{"labels": [[name, label], ...]}``, or ``{"labels": null}`` without labels.
    """
    path = Path(path)
    images, labels = _as_uint8_nchw(images, labels)
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    meta = {"labels": None if labels is None else [[n, int(c)] for n, c in zip(names, labels)]}
    with _atomic_file(path, overwrite) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, img in zip(names, images):
            zf.writestr(name, _png_bytes(img))
        zf.writestr("dataset.json", json.dumps(meta))
    return path


def write_png_folder(folder: str | Path, images, labels=None) -> Path:
    """Write ``000000.png``, ``000001.png``, ... into ``folder`` (plus ``dataset.json`` given labels).

    Refuses a folder that exists and is not empty. The files are written into a temporary sibling
    folder which then replaces ``folder`` in one rename.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder}: already exists and is not an empty folder; refusing to overwrite it")
    images, labels = _as_uint8_nchw(images, labels)
    width = max(6, len(str(len(images) - 1)))
    names = [f"{i:0{width}d}.png" for i in range(len(images))]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as err:
        raise InputError(f"{folder}: cannot write ({err.strerror or err})") from None
    try:
        for name, img in zip(names, images):
            (tmp / name).write_bytes(_png_bytes(img))
        if labels is not None:
            (tmp / "dataset.json").write_text(json.dumps({"labels": [[n, int(c)] for n, c in zip(names, labels)]}))
        os.replace(tmp, folder)  # replaces an empty folder too
    except BaseException as err:
        for p in tmp.iterdir():
            p.unlink(missing_ok=True)
        tmp.rmdir()
        if isinstance(err, OSError):
            raise InputError(f"{folder}: cannot write ({err.strerror or err})") from None
        raise
    return folder


def save_npz(path: str | Path, images, labels=None, *, overwrite: bool = False) -> Path:
    """Save ``images`` (ImageSet or array, stored as given) and optional ``labels`` to an ``.npz``, atomically."""
    path = Path(path)
    if isinstance(images, ImageSet):
        images, labels = images.images, images.labels if labels is None else labels
    arrays = {"images": np.asarray(images)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    with _atomic_file(path, overwrite) as f:
        np.savez(f, **arrays)
    return path
