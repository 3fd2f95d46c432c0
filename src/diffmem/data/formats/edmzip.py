"""EDM-style dataset zips: PNGs (``00000/img00000000.png``, ...) plus an optional ``dataset.json``
holding ``{"labels": [[name, int], ...]}`` or ``{"labels": null}``."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from diffmem.data.formats.common import as_uint8_nchw, atomic_file, fail, finish, labels_from_json, labels_json
from diffmem.data.formats.png import png_bytes, read_png, stack
from diffmem.data.imageset import ImageSet


def read_dataset_zip(path: Path, param: str | None) -> ImageSet:
    """Every PNG in the zip (sorted by member name; ``__MACOSX/`` ignored) and its labels."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(".png") and not n.startswith("__MACOSX/"))
            if not names:
                raise fail(param, path, "zip contains no PNG images")
            images = stack([(n, read_png(io.BytesIO(zf.read(n)), f"{path}:{n}", param)) for n in names],
                           param, path)
            labels = None
            if "dataset.json" in zf.namelist():
                labels = labels_from_json(zf.read("dataset.json"), names, param, f"{path}:dataset.json")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
        raise fail(param, path, f"not a readable zip archive ({err})") from None
    return finish(images, labels, param, path, path)


def write_dataset_zip(path, images, labels=None, *, overwrite: bool = False, param: str | None = None) -> Path:
    """Write an EDM-style dataset zip: ``00000/img00000000.png``, ... and ``dataset.json``.

    ``images`` is an ImageSet or (N, C, H, W) uint8 (float model-space images are quantized);
    ``labels`` (N,) class indices or None. ``dataset.json`` holds ``{"labels": [[name, label], ...]}``,
    or ``{"labels": null}`` without labels. Refuses an existing file unless ``overwrite``; errors name
    ``param`` and the file. Written atomically, with the mode the umask gives new files.
    """
    images, labels = as_uint8_nchw(images, labels)
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    with atomic_file(path, overwrite, param) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, img in zip(names, images):
            zf.writestr(name, png_bytes(img))
        zf.writestr("dataset.json", labels_json(names, labels))
    return Path(path)
