"""``diffmem audit MODEL-or-SAMPLES --train T``: every memorization criterion the inputs allow, one
report, one verdict line (:func:`diffmem.auditing.audit.audit`).

Exit status, so the command fits a CI gate: 0 when the audit passes (or no ``--fail-above`` was
given), 1 when the ``--gate`` criterion's flagged fraction is above ``--fail-above``, 2 for bad input
(one line on stderr naming the flag or file).
"""

from __future__ import annotations

import json
import sys

import click

from diffmem.progress import progress_enabled

from diffmem.cli.options import parse_bytes, parse_fraction, resolve_device
from diffmem.errors import InputError

#: Library parameters that name the positional argument rather than a flag.
_POSITIONAL = ("model", "model_or_samples")
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def bound_malloc(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold so every freed block above ``threshold`` bytes goes back to the
    system at once. By default glibc raises the threshold after the first large ``free`` and keeps
    later blocks in its heap, so the resident memory of a streamed audit grows far past
    ``--memory-limit`` although the live data does not (benchmarks/RESULTS.md: 0.67 GiB at a 64 MiB
    limit). Returns False where there is no glibc (nothing is changed)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


@click.command("audit")
@click.argument("model_or_samples", metavar="MODEL-or-SAMPLES")
@click.option("--train", "train_path", required=True,
              help="Training images: .npy (memory-mapped), .npz, EDM .zip or PNG folder (read in chunks), ...")
@click.option("--heldout", default=None, help="Held-out images of the same distribution (enables copying, membership).")
@click.option("--features", default=None, help="Feature space: pixels, pca:K, classifier or a TorchScript file.")
@click.option("--source", default=None, help="The images' built-in source, for --features classifier.")
@click.option("--num", default=1000, show_default=True, type=int, help="Samples to draw when given a model.")
@click.option("--steps", default=18, show_default=True, type=int, help="Heun steps when sampling a model.")
@click.option("--threshold", default="1/3", show_default=True, help="The d1/d2 threshold of the 1/3 rule.")
@click.option("--gate", default="pixel", show_default=True, help="The criterion --fail-above applies to.")
@click.option("--fail-above", default=None, help="Fail (exit 1) when the gate's flagged fraction is above this.")
@click.option("--tiles", default=None, type=int,
              help="Extraction on a G x G grid of tiles (Carlini et al.'s tiled l2, for large images).")
@click.option("--membership-method", default="loss", show_default=True,
              help="Membership inference: loss (per-image denoising loss) or secmi (SecMI's t-error).")
@click.option("--memory-limit", default="2GiB", show_default=True, help="Working memory (training set read in chunks).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of sampling and bootstraps.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled model files (trusted files only).")
@click.option("--out", "out_dir", required=True, help="New folder for the report, tables and audit.json.")
@click.option("--json", "as_json", is_flag=True, help="Print audit.json's content on stdout instead of the verdict.")
@click.option("--progress/--no-progress", default=None, help="A line on stderr as each criterion finishes [on unless $CI is set]; progress bars [when a terminal].")
def audit_cmd(model_or_samples, train_path, heldout, features, source, num, steps, threshold, gate, fail_above,
              tiles, membership_method, memory_limit, device, seed, allow_pickle, out_dir, as_json, progress):
    """Audit a model (sampled --num times) or a set of samples against --train; print one verdict
    line. Exit 0: pass; 1: the --gate criterion's flagged fraction is above --fail-above; 2: bad input."""
    from diffmem.auditing.audit import audit

    bound_malloc()  # the command owns its process: make --memory-limit hold for resident memory too
    threshold = parse_fraction(threshold, "threshold")
    fail_above = None if fail_above is None else parse_fraction(fail_above, "fail_above")
    limit = parse_bytes(memory_limit, "memory_limit")
    device = resolve_device(device)
    try:
        result = audit(model_or_samples, train_path, heldout, num=num, features=features, source=source,
                       threshold=threshold, gate=gate, fail_above=fail_above, out=out_dir, memory_limit=limit,
                       device=device, seed=seed, steps=steps, allow_pickle=allow_pickle, tiles=tiles,
                       membership_method=membership_method,
                       progress=sys.stderr.isatty() if progress is None else progress,
                       report=progress_enabled(progress))
    except InputError as err:
        if err.param in _POSITIONAL:  # the argument has no flag: name it as the usage line does
            raise InputError(f"MODEL-or-SAMPLES: {err.detail}") from None
        raise
    click.echo(json.dumps(result.summary(), allow_nan=False) if as_json else result.verdict)
    if not result.passed:
        raise click.exceptions.Exit(1)
