"""Parsing and checks shared by the subcommands (each raises InputError naming its flag)."""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from diffmem.atomic import atomic_path
from diffmem.errors import InputError

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30}


def parse_fraction(text: str, flag: str) -> float:
    """``0.3333``, ``1/3`` → float."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise InputError(f"{flag}: expected a number such as 0.3333 or 1/3, got {text!r}") from None


def parse_bytes(text: str, flag: str) -> int:
    """``2GiB``, ``512MiB``, ``1e9`` → bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    try:
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]  # type: ignore[union-attr]
    except (AttributeError, KeyError, ValueError):
        raise InputError(f"{flag}: expected a size such as 2GiB or 512MiB, got {text!r}") from None
    if value < 16 * 2**20:
        raise InputError(f"{flag}: at least 16MiB is needed, got {text!r}")
    return int(value)


def resolve_device(text: str, flag: str = "--device") -> str:
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{flag}: {text} requested but CUDA is not available on this machine")
    if text != "cpu" and not text.startswith("cuda"):
        raise InputError(f"{flag}: expected auto, cpu or cuda[:N], got {text!r}")
    return text


def fresh_output_dir(path: str | Path, names: list[str], flag: str = "--out") -> Path:
    """Create ``path`` if needed and check that none of ``names`` exists in it (never overwrite)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{flag} {path}: cannot create folder ({err.strerror or err})") from None
    if not os.access(path, os.W_OK):
        raise InputError(f"{flag} {path}: folder is not writable")
    taken = [n for n in names if (path / n).exists()]
    if taken:
        raise InputError(f"{flag} {path}: {', '.join(taken)} already exist; refusing to overwrite (choose a new folder)")
    return path


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
