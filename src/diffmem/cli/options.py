"""Parsing and checks shared by the subcommands.

Each raises :class:`~diffmem.errors.InputError` naming its *parameter* (``memory_limit``); the
command line shows it as the flag (``--memory-limit``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import click

from diffmem.atomic import prepare_output
from diffmem.errors import InputError

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30}
MIN_MEMORY = 16 * 2**20


def _param(name: str) -> str:
    """Accept a parameter name or (as older callers pass) its flag: ``--memory-limit`` -> ``memory_limit``."""
    return name.lstrip("-").replace("-", "_")


def parse_fraction(text: str, param: str) -> float:
    """``0.3333``, ``1/3`` → float."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError, OverflowError):
        raise InputError(f"expected a number such as 0.3333 or 1/3, got {text!r}", param=_param(param)) from None


def parse_bytes(text: str, param: str = "memory_limit") -> int:
    """``2GiB``, ``512MiB``, ``1e9`` → bytes (at least 16MiB; finite)."""
    param = _param(param)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    try:
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]  # type: ignore[union-attr]
    except (AttributeError, KeyError, ValueError, OverflowError):
        raise InputError(f"expected a size such as 2GiB or 512MiB, got {text!r}", param=param) from None
    if not math.isfinite(value):
        raise InputError(f"expected a finite size such as 2GiB or 512MiB, got {text!r}", param=param)
    if value < MIN_MEMORY:
        raise InputError(f"at least 16MiB is needed, got {text!r}", param=param)
    return int(value)


def resolve_device(text: str, param: str = "device") -> str:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``."""
    import torch

    param = _param(param)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{text} requested but CUDA is not available on this machine", param=param)
    if text != "cpu" and not text.startswith("cuda"):
        raise InputError(f"expected auto, cpu or cuda[:N], got {text!r}", param=param)
    return text


def fresh_output_dir(path: str | Path, names, param: str = "out") -> Path:
    """Create the folder ``path`` if needed; none of ``names`` may exist in it (never overwrite).

    A thin call of :func:`diffmem.atomic.prepare_output` (``kind="folder"``).
    """
    return prepare_output(path, kind="folder", names=tuple(names), param=_param(param))


# ---------------------------------------------------------------------------------------------
# The engine options: one list for every study command (sweep, emm, timescales, two-split,
# random-features, regularization), so each runs locally or on Ray alike.

#: ``--out`` of the study commands whose output folder defaults to the spec's name.
OUT_OPTION = click.option("--out", default=None, help="Output folder [a folder named after the spec, here].")

ENGINE_OPTIONS = [
    click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="local: worker processes here; ray: Ray tasks (pip install 'diffmem[ray]')."),
    click.option("--workers", type=int, default=1, show_default=True, help="Jobs (training runs, cells) at a time."),
    click.option("--threads", type=int, default=None, help="Threads per job [cores / workers]."),
    click.option("--address", default=None, help="Ray: address of an existing cluster (default: a local instance); "
                                                 "--out must then be storage every node sees."),
    click.option("--gpus", type=float, default=0.0, show_default=True, help="Ray: GPUs requested per job."),
    click.option("--ray-logs", is_flag=True, default=False, help="Ray: show Ray's own log lines in the terminal."),
    click.option("--progress/--no-progress", default=None,
                 help="A line on stderr as each job (run, EMM size, snapshot) finishes, with an ETA [on unless $CI is set]."),
]


def engine_options(fn):
    """Decorate a study command with :data:`ENGINE_OPTIONS`."""
    for option in reversed(ENGINE_OPTIONS):
        fn = option(fn)
    return fn


def study_arguments(engine, workers, threads, address, gpus, ray_logs, progress) -> dict:
    """The keywords of every study's ``run(spec, out, *, engine, workers, threads, log, progress)``
    from the engine options, checked (errors name the parameter)."""
    import sys

    from diffmem.progress import progress_enabled
    from diffmem.studies.engines import Engine, check_pool

    workers, threads = check_pool(workers, threads)
    return dict(engine=Engine(engine, address=address, gpus=gpus, ray_logs=ray_logs), workers=workers,
                threads=threads, progress=progress_enabled(progress),
                log=lambda line: click.echo(line, err=True))
