"""Output files and folders: one check before writing, atomic writes, the user's umask honoured.

- :func:`prepare_output` is the one check every writer and command runs on an output path
  (empty path, a parent that is a file, an existing file, a non-empty folder) before any work.
- :func:`atomic_path` / :func:`atomic_folder` write beside the target and move the result into
  place with ``os.replace``: a process killed at any moment leaves either the old output or the
  complete new one, never a torn one. Leftover temporaries are named ``.<name>.<random>.tmp``.
- ``tempfile`` creates its files 0600 and folders 0700; outputs are given the modes any other
  tool would create them with (``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from diffmem.errors import InputError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting 0 and restoring it
    at once, under a lock (the only way POSIX offers).
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode a new folder gets from ``mkdir``: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def _refuse(param: str | None, message: str):
    raise InputError(message, param=param)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the current folder for a relative path)."""
    for cand in (path, *path.parents):
        if cand.exists():
            return cand
    return Path(".")


def _make_folders(folder: Path, shown: Path, param: str | None) -> None:
    """Create ``folder`` and its parents (modes from the umask), refusing a file in the way."""
    blocker = _nearest_existing(folder)
    if not blocker.is_dir():
        _refuse(param, f"{shown}: cannot write, {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _refuse(param, f"{shown}: cannot create folder {folder} ({err.strerror or err})")


def prepare_output(path: str | os.PathLike, *, kind: str, names=(), param: str | None = "out",
                   overwrite: bool = False, create: bool = True) -> Path:
    """Check that ``path`` can take new output without overwriting anything; return it as a Path.

    ``kind="file"``: ``path`` will be one file. Refused: an empty path, an existing folder, an
    existing file (unless ``overwrite``), a parent that is a file or cannot be created.
    ``kind="folder"``: ``path`` will be a folder of outputs. Refused: an empty path, an existing
    file, a parent that is a file; with ``names``, a folder holding any of ``names`` (unless
    ``overwrite``); without ``names``, a folder that is not empty (unless ``overwrite``).

    With ``create`` (the default) the missing folders are created (modes from the umask: the file's
    parents, or the folder itself) and must be writable. Errors are :class:`InputError` naming
    ``param`` (the command line shows its flag) and the path.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"prepare_output: kind must be 'file' or 'folder', got {kind!r}")
    if path is None or not str(path).strip():
        _refuse(param, "an empty path is not an output; give a file or folder name")
    try:
        return _prepare(Path(path), kind, names, param, overwrite, create)
    except OSError as err:  # e.g. a name too long for the file system
        _refuse(param, f"{path}: cannot use this path ({err.strerror or err})")


def _prepare(path: Path, kind: str, names, param, overwrite: bool, create: bool) -> Path:
    if kind == "file":
        if path.is_dir():
            _refuse(param, f"{path}: is a folder; give a file name")
        if path.exists() and not overwrite:
            _refuse(param, f"{path}: already exists; refusing to overwrite it")
        folder = path.parent
    else:
        if path.exists() and not path.is_dir():
            _refuse(param, f"{path}: exists and is not a folder")
        if path.is_dir() and not overwrite:
            taken = [n for n in names if (path / n).exists()] if names else []
            if taken:
                _refuse(param, f"{path}: {', '.join(taken)} already exist; refusing to overwrite "
                               f"(choose a new folder)")
            if not names and any(path.iterdir()):
                _refuse(param, f"{path}: already exists and is not an empty folder; refusing to overwrite it")
        folder = path
    if not create:
        blocker = _nearest_existing(folder)
        if not blocker.is_dir():
            _refuse(param, f"{path}: cannot write, {blocker} is a file, not a folder")
        if not os.access(blocker, os.W_OK | os.X_OK):
            _refuse(param, f"{path}: cannot write, folder {blocker} is not writable")
        return path
    _make_folders(folder, path, param)
    if not os.access(folder, os.W_OK | os.X_OK):
        _refuse(param, f"{path}: folder {folder} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    The result gets the mode a new file would get (``0o666 & ~umask``), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """Yield a temporary folder beside ``path``; when the block succeeds it replaces ``path``
    (which must not exist or be an empty folder). The folder gets ``0o777 & ~umask``."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, folder_mode())
        os.replace(tmp, path)  # replaces an empty folder too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | Path, obj, *, allow_nan: bool = True) -> None:
    """``obj`` as indented JSON; ``allow_nan=False`` refuses NaN and infinities (strict JSON)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=allow_nan) + "\n")


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Arrays saved to an uncompressed ``.npz``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporaries a killed process left behind in ``folder``."""
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
