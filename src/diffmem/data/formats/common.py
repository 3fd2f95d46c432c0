"""What the format readers and writers share: naming the file at fault, and the final checks."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from diffmem.atomic import atomic_path, prepare_output
from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.errors import InputError


def param_name(what: str | None) -> str | None:
    """A reader's ``what`` as a parameter name: ``"--train"`` or ``"train"`` give ``"train"``,
    ``""`` or None give None (the message then names only the file)."""
    return what.lstrip("-").replace("-", "_") or None if what else None


def fail(param: str | None, place, detail: str) -> InputError:
    """The error for ``place`` (a file, or a member of one): ``"{place}: {detail}"`` naming ``param``."""
    return InputError(f"{place}: {detail}", param=param)


def input_path(path, param: str | None) -> Path:
    """``path`` as a Path; an empty one (which would mean the current folder) is refused."""
    if path is None or not str(path).strip():
        raise InputError("an empty path is not an image set; give a file or folder", param=param)
    return Path(path)


def exists(path: Path, param: str | None) -> bool:
    """Whether ``path`` exists. A path that cannot be looked at (a folder above it without read
    permission, a symlink loop, a name too long) is an InputError naming it, not a False."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        raise fail(param, path, f"cannot read ({err.strerror or err})") from None
    return True


def finish(images: np.ndarray, labels, param: str | None, place, source: Path, label_names=None) -> ImageSet:
    """Build the ImageSet (``source`` = the path), re-raising its validation errors as ``place``."""
    try:
        return ImageSet(images, labels, source=str(source), label_names=label_names)
    except InputError as err:
        msg = str(err)
        msg = msg[len(str(source)) + 2:] if msg.startswith(f"{source}: ") else msg
        raise fail(param, place, msg) from None


def as_uint8_nchw(images, labels):
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


@contextlib.contextmanager
def atomic_file(path, overwrite: bool, param: str | None):
    """Yield a binary file that atomically becomes ``path`` (checked by
    :func:`diffmem.atomic.prepare_output`); write errors become InputErrors naming it."""
    path = prepare_output(path, kind="file", overwrite=overwrite, param=param)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            yield f
    except OSError as err:
        raise fail(param, path, f"cannot write ({err.strerror or err})") from None


def labels_from_json(text: bytes, names: list[str], param: str | None, place) -> np.ndarray | None:
    """Labels from EDM's ``dataset.json`` (``{"labels": [[name, int], ...] | null}``), in ``names``
    order; None for ``null``. Values must be class indices (see :data:`~diffmem.data.imageset.MAX_LABEL`)."""
    import json

    from diffmem.data.imageset import check_labels

    try:
        meta = json.loads(text)
        entries = meta.get("labels") if isinstance(meta, dict) else meta["labels"]
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise fail(param, place, f"dataset.json is not valid ({err})") from None
    if entries is None:
        return None
    try:
        table = {str(name).replace("\\", "/"): _whole(label) for name, label in entries}
    except (TypeError, ValueError, OverflowError):
        raise fail(param, place, '"labels" must be a list of [name, int] pairs') from None
    missing = [name for name in names if name not in table]
    if missing:
        raise fail(param, place, f"has no label for {missing[0]} ({len(missing)} images unlabeled)")
    values = [table[name] for name in names]
    try:
        return check_labels(np.array(values, dtype=object), "")
    except InputError as err:
        raise fail(param, place, err.detail.lstrip(": ")) from None


def _whole(value) -> int:
    """A JSON label: an int (or a float with no fractional part), never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(value)
    return int(value)


def labels_json(names: list[str], labels) -> str:
    """EDM's ``dataset.json`` for ``names`` and ``labels`` (``{"labels": null}`` without labels)."""
    import json

    return json.dumps({"labels": None if labels is None else [[n, int(c)] for n, c in zip(names, labels)]})
