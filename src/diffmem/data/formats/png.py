"""PNG images: one file, or a folder of them (searched recursively, sorted by relative path).

PNG policy: grayscale (``L``, ``1``) gives one channel and RGB three; palette images are expanded.
An alpha channel is dropped when it is fully opaque and is an error otherwise (there is no
background to composite onto). One set never mixes channel counts or sizes: that is an error.
A folder may hold EDM's ``dataset.json`` beside the PNGs (labels keyed by relative path).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from diffmem.atomic import atomic_folder, prepare_output
from diffmem.data.formats.common import as_uint8_nchw, fail, finish, labels_from_json, labels_json
from diffmem.data.imageset import ImageSet
from diffmem.errors import InputError

_KINDS = {1: "grayscale", 3: "RGB"}


def read_png(file, where, param: str | None = None) -> np.ndarray:
    """Decode one PNG (a path or a binary file object) to a (C, H, W) uint8 array, C = 1 or 3.

    ``where`` names the file in error messages, ``param`` the parameter it came from.
    """
    try:
        with warnings.catch_warnings():  # PIL only warns about images past its first size limit: refuse them
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(file)
        with img:
            img.load()
            if img.format != "PNG":
                raise fail(param, where, f"not a PNG (found {img.format})")
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode == "1":
                img = img.convert("L")
            if img.mode not in ("L", "LA", "RGB", "RGBA"):
                raise fail(param, where, f"unsupported PNG mode {img.mode}; use 8-bit grayscale or RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        if isinstance(err, InputError):
            raise
        raise fail(param, where, f"not a readable PNG ({err})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] in (2, 4):  # LA / RGBA: drop alpha only if it is fully opaque
        if (arr[:, :, -1] != 255).any():
            raise fail(param, where, "PNG has a transparent alpha channel; save it as grayscale or RGB")
        arr = arr[:, :, :-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def stack(named_images: list[tuple[str, np.ndarray]], param: str | None, where) -> np.ndarray:
    """Stack (C, H, W) arrays to (N, C, H, W), refusing mixed channel counts or sizes (naming the
    first odd PNG)."""
    first_name, first = named_images[0]
    for name, img in named_images[1:]:
        if img.shape[0] != first.shape[0]:
            raise fail(param, where, f"mixed channel counts: {name} is {_KINDS[img.shape[0]]} but {first_name} "
                                     f"is {_KINDS[first.shape[0]]}; convert them to one kind")
        if img.shape[1:] != first.shape[1:]:
            raise fail(param, where, f"mixed image sizes: {name} is {img.shape[2]}x{img.shape[1]} but "
                                     f"{first_name} is {first.shape[2]}x{first.shape[1]}")
    return np.stack([img for _, img in named_images])


def read_png_file(path: Path, param: str | None) -> ImageSet:
    """A single PNG as a set of one image."""
    return finish(read_png(path, path, param)[None], None, param, path, path)


def _png_files(folder: Path, param: str | None) -> list[Path]:
    """Every ``*.png`` file under ``folder`` (symlinked folders are not entered). A subfolder that
    cannot be read is an error naming it: skipping it would silently drop its images."""
    def refuse(err: OSError):
        raise fail(param, err.filename or folder, f"cannot read the folder ({err.strerror or err})")

    return [Path(root) / name for root, _, names in os.walk(folder, onerror=refuse)
            for name in names if Path(name).suffix.lower() == ".png" and os.path.isfile(os.path.join(root, name))]


def read_png_folder(folder: Path, param: str | None) -> ImageSet:
    """Every ``*.png`` under ``folder`` (any depth, sorted by relative path), with the labels of a
    ``dataset.json`` beside them if there is one."""
    files = sorted(_png_files(folder, param), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise fail(param, folder, "folder contains no PNG images")
    rel = [p.relative_to(folder).as_posix() for p in files]
    images = stack([(r, read_png(p, f"{folder}/{r}", param)) for r, p in zip(rel, files)], param, folder)
    meta = folder / "dataset.json"
    labels = None
    if meta.is_file():
        try:
            text = meta.read_bytes()
        except OSError as err:
            raise fail(param, meta, f"cannot read ({err.strerror or err})") from None
        labels = labels_from_json(text, rel, param, meta)
    return finish(images, labels, param, folder, folder)


def png_bytes(chw: np.ndarray) -> bytes:
    """One (C, H, W) uint8 image encoded as PNG."""
    img = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_png_folder(folder, images, labels=None, *, param: str | None = None) -> Path:
    """Write ``000000.png``, ``000001.png``, ... into ``folder`` (plus ``dataset.json`` given labels).

    ``images``: an ImageSet or (N, C, H, W) uint8 (float model-space images are quantized).
    Refuses a folder that exists and is not empty (see :func:`diffmem.atomic.prepare_output`). The
    files are written into a temporary sibling folder which then replaces ``folder`` in one rename;
    the folder and files get the modes the umask gives new ones.
    """
    folder = prepare_output(folder, kind="folder", param=param, create=False)
    images, labels = as_uint8_nchw(images, labels)
    width = max(6, len(str(len(images) - 1)))
    names = [f"{i:0{width}d}.png" for i in range(len(images))]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(folder) as tmp:
            for name, img in zip(names, images):
                (tmp / name).write_bytes(png_bytes(img))
            if labels is not None:
                (tmp / "dataset.json").write_text(labels_json(names, labels))
    except OSError as err:
        raise fail(param, folder, f"cannot write ({err.strerror or err})") from None
    return folder
