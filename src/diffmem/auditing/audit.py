"""The practitioner's audit: every memorization criterion a model's (or a sample set's) inputs
allow, one verdict, one report.

``audit(model_or_samples, train, heldout=None, ...)`` takes generated images (an image set on disk
or in memory) or a model (a diffmem run folder, a diffusers UNet folder, a TorchScript file, or a
loaded :class:`~diffmem.denoisers.protocol.Denoiser`, from which it draws ``num`` samples and saves
them), a training set (read in chunks through :mod:`diffmem.data.stream`, so a set larger than
memory is audited within ``memory_limit`` bytes), and optionally a held-out set. It runs the
criteria of :mod:`diffmem.auditing.criteria` that these inputs allow, says which it skipped and why,
and returns an :class:`AuditResult` with a per-sample table and a one-line :attr:`~AuditResult.verdict`.

The gate: with ``fail_above = R``, the audit *fails* when the flagged fraction of the ``gate``
criterion (default ``pixel``: Yoon et al.'s ``d1/d2 < 1/3`` in pixel space) is above ``R``;
``passed`` is then False and the command line exits with status 1. Without ``fail_above`` it passes.

Memory: the training set is never loaded whole. A path is opened by
:func:`diffmem.data.stream.open_streamed` (``.npy`` memory-mapped; ``.npz``, EDM ``.zip`` and PNG
folders decoded chunk by chunk into a memory-mapped cache file under ``out``, deleted afterwards);
the exact searches read it block by block within ``memory_limit``; feature embeddings of the
training set are computed chunk by chunk (and memory-mapped when large). Two exceptions: C_T fits
k-means on the whole training set, so it is skipped (and says so) when the set as float64 exceeds
``memory_limit``; and the exact search's rare full-scan fallback
(:mod:`diffmem.metrics.neighbors`) works in blocks of up to 256 MiB whatever the limit.
Membership inference scores a seeded subset of min(N, H, 2000) training images.

Outputs under ``out`` (a new or empty folder; nothing is overwritten): ``audit.json`` (the summary),
``per_sample.csv`` and ``per_sample.npz`` (one row per generated sample: nearest training images,
distances per criterion, flags), ``samples.npz`` when a model was sampled, and ``report/index.html``
with its figures (:mod:`diffmem.auditing.report`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffmem.atomic import prepare_output
from diffmem.auditing.criteria import CRITERIA, AuditInputs, Criterion
from diffmem.auditing.inputs import resolve_generated
from diffmem.data.stream import DEFAULT_MEMORY_LIMIT, open_streamed
from diffmem.errors import InputError, check_number
from diffmem.metrics.memorization import DEFAULT_THRESHOLD
from diffmem.rng import check_seed

__all__ = ["audit", "AuditResult", "Criterion", "OUTPUTS"]

OUTPUTS = ("audit.json", "per_sample.csv", "per_sample.npz", "samples.npz", "report")


@dataclass
class AuditResult:
    """What :func:`audit` found: one :class:`Criterion` per criterion (run or skipped), in order.

    ``passed`` is False only when ``fail_above`` was given and the ``gate`` criterion's flagged
    fraction is above it. ``files`` maps output names to paths (empty without ``out``).
    """

    criteria: list[Criterion]
    n_generated: int
    n_train: int
    gate: str
    fail_above: float | None
    sampled: bool  # True when the samples were drawn from a model
    files: dict = field(default_factory=dict)

    def criterion(self, name: str) -> Criterion:
        return next(c for c in self.criteria if c.name == name)

    @property
    def ran(self) -> list[Criterion]:
        return [c for c in self.criteria if c.ran]

    @property
    def gate_rate(self) -> float:
        """The flagged fraction of the gate criterion, in [0, 1]."""
        return float(self.criterion(self.gate).rate)

    @property
    def passed(self) -> bool:
        return self.fail_above is None or self.gate_rate <= self.fail_above

    @property
    def verdict(self) -> str:
        """One line: PASS/FAIL (or AUDIT without a threshold), the gate's numbers, what ran and what not."""
        gate = self.criterion(self.gate)
        n = int(gate.flags.sum())
        head = "AUDIT" if self.fail_above is None else ("PASS" if self.passed else "FAIL")
        limit = "" if self.fail_above is None else (
            f" {'<=' if self.passed else '>'} fail-above {self.fail_above:g}")
        ci = "" if gate.ci95 is None else f" (95% CI {gate.ci95[0]:.3f}-{gate.ci95[1]:.3f})"
        skipped = [c.name for c in self.criteria if not c.ran]
        return (f"{head}: {n} of {self.n_generated} generated samples flagged by {self.gate} "
                f"({self.gate_rate:.3f}{ci}){limit}; {self.n_train} training images; criteria run: "
                f"{', '.join(c.name for c in self.ran)}" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))

    def table(self) -> dict[str, np.ndarray]:
        """The per-sample table: ``sample`` (M,), each criterion's columns ``<name>_<column>`` (M,),
        ``flagged_any`` (any per-sample criterion flags it) and ``gate_flag``."""
        cols = {"sample": np.arange(self.n_generated)}
        flags = np.zeros(self.n_generated, dtype=bool)
        for c in self.ran:
            for key, values in c.columns.items():
                cols[f"{c.name}_{key}"] = np.asarray(values)
            if c.flags is not None:
                cols[f"{c.name}_flag"] = c.flags
                flags |= c.flags
        cols["flagged_any"] = flags
        cols["gate_flag"] = self.criterion(self.gate).flags
        return cols

    def summary(self) -> dict:
        """JSON-ready: verdict, passed, gate, sizes, and per criterion its summary or why it was skipped."""
        return {
            "verdict": self.verdict, "passed": self.passed, "gate": self.gate, "gate_rate": self.gate_rate,
            "fail_above": self.fail_above, "n_generated": self.n_generated, "n_train": self.n_train,
            "sampled_from_model": self.sampled,
            "criteria": {c.name: {"ran": c.ran, "explanation": c.explanation, "rate": c.rate,
                                  "ci95": None if c.ci95 is None else [float(v) for v in c.ci95], **c.summary}
                         for c in self.criteria},
            "files": {k: str(v) for k, v in self.files.items()},
        }


def _check_options(num, threshold, gate, fail_above, memory_limit, seed, tiles, membership_method):
    num = check_number("num", num, lo=1, hi=10**7, integer=True)
    if tiles is not None:
        check_number("tiles", tiles, lo=1, integer=True)
    if membership_method not in ("loss", "secmi"):
        raise InputError(f"expected loss or secmi, got {membership_method!r}", param="membership_method")
    threshold = check_number("threshold", threshold, lo=0.0, lo_open=True, hi=1.0)
    names = [name for name, _ in CRITERIA]
    if gate not in names:
        raise InputError(f"unknown criterion {gate!r} (one of {', '.join(names)})", param="gate")
    if fail_above is not None:
        fail_above = check_number("fail_above", fail_above, lo=0.0, hi=1.0)
    memory_limit = check_number("memory_limit", memory_limit, lo=16 * 2**20, integer=True)
    return num, threshold, fail_above, memory_limit, check_seed(seed)


def audit(model_or_samples, train, heldout=None, *, num: int = 1000, features=None, source: str | None = None,
          threshold: float = DEFAULT_THRESHOLD,
          gate: str = "pixel", fail_above: float | None = None, out=None, memory_limit: int = DEFAULT_MEMORY_LIMIT,
          device: str | None = None, seed: int = 0, steps: int = 18, progress: bool = False,
          allow_pickle: bool = False, tiles: int | None = None, membership_method: str = "loss",
          report: bool | None = None) -> AuditResult:
    """Audit generated samples (or a model, sampled ``num`` times) against the training set ``train``.

    ``train`` and ``heldout`` are paths (PNG folder, ``.npz``, ``.npy``, EDM ``.zip``, ...) or
    in-memory image sets (ImageSet / (N, C, H, W) arrays); ``features`` a feature-space spec of
    :func:`diffmem.metrics.features.load_features` (``pixels``, ``pca:K``, ``classifier``, a
    TorchScript path) or None, ``source`` the built-in source the ``classifier`` features need;
    ``threshold`` the 1/3 rule's threshold; ``gate`` the criterion that
    ``fail_above`` (a fraction in [0, 1]) applies to; ``memory_limit`` bytes for reading the
    training set and the neighbour search; ``seed`` for sampling and bootstraps; ``steps`` the Heun
    steps of sampling a model; ``tiles`` a G × G grid for Carlini et al.'s tiled extraction distance
    (large images); ``membership_method`` ``loss`` or ``secmi``. ``progress``: progress bars;
    ``report`` (default: ``progress``): a line on stderr as each criterion finishes. Bad input raises
    :class:`~diffmem.errors.InputError` naming the parameter.
    """
    num, threshold, fail_above, memory_limit, seed = _check_options(num, threshold, gate, fail_above,
                                                                    memory_limit, seed, tiles, membership_method)
    steps = check_number("steps", steps, lo=1, hi=10_000, integer=True)
    created = out is not None and str(out).strip() != "" and not Path(out).exists()
    if out is not None:
        out = prepare_output(out, kind="folder", names=OUTPUTS)
    cache = Path(tempfile.mkdtemp(prefix=".audit-cache.", dir=out))
    opened: list = []
    try:
        train_set = _open(train, "train", memory_limit, cache, progress, opened)
        held = None if heldout is None else _open(heldout, "heldout", memory_limit, cache, progress, opened)
        if held is not None and held.shape != train_set.shape:
            raise InputError(f"held-out images have shape {held.shape} but training images have {train_set.shape}",
                             param="heldout")
        gen = resolve_generated(model_or_samples, train_set, num=num, seed=seed, steps=steps, device=device or "cpu",
                                progress=progress, allow_pickle=allow_pickle)
        _check_features(features, source, train_set, device or "cpu")  # before any criterion reports
        _check_gate(gate, features, held, gen.denoiser)
        if tiles is not None and (len(train_set.shape) != 3 or train_set.shape[1] % tiles or train_set.shape[2] % tiles):
            raise InputError(f"images of shape {tuple(train_set.shape)} cannot be cut into {tiles} x {tiles} equal "
                             "tiles", param="tiles")
        ctx = AuditInputs(train=train_set, generated=gen.images, heldout=held, denoiser=gen.denoiser,
                          features=features, source=source, threshold=threshold, memory_limit=memory_limit,
                          device=device or "cpu", seed=seed, progress=progress, cache=cache, tiles=tiles,
                          membership_method=membership_method)
        return _finish(ctx, gate, fail_above, out, progress if report is None else report)
    except BaseException:
        if created:  # bad input (or an interruption) leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        for s in opened:
            s.close()
        shutil.rmtree(cache, ignore_errors=True)


def _check_gate(gate: str, features, heldout, denoiser) -> None:
    """The gate's inputs are there (else the audit would run every criterion, then refuse)."""
    needs = {"features": (features is not None, "no feature space given (--features)"),
             "replication": (features is not None, "no feature space given (--features)"),
             "copying": (heldout is not None, "needs held-out images (--heldout)"),
             "membership": (denoiser is not None and heldout is not None,
                            "needs a model, not samples" if denoiser is None else "needs held-out images (--heldout)")}
    ok, why = needs.get(gate, (True, ""))
    if not ok:
        raise InputError(f"the gate criterion {gate} cannot run ({gate}: skipped, {why})", param="gate")


def _check_features(features, source, train_set, device) -> None:
    """A feature space that cannot work is refused before the first criterion runs (and reports):
    the classifier needs its source; a TorchScript file is tried on a few training images."""
    from diffmem.metrics.features import ClassifierFeatures, check_extractor, load_features, parse_features

    if features is None or not isinstance(features, str):
        return
    kind, _ = parse_features(features)
    if kind == "classifier":
        ClassifierFeatures(source, device)
    elif kind not in ("pixels", "pca"):
        check_extractor(load_features(features, device=device), np.asarray(train_set.images[:32]))


def _finish(ctx: AuditInputs, gate: str, fail_above: float | None, out: Path | None, report: bool) -> AuditResult:
    """Run the criteria, check the gate ran, write the outputs."""
    result = AuditResult(_run_criteria(ctx, report), len(ctx.generated), len(ctx.train), gate, fail_above,
                         ctx.denoiser is not None)
    if not result.criterion(gate).ran:
        raise InputError(f"the gate criterion {gate} did not run ({result.criterion(gate).explanation})",
                         param="gate")
    if out is not None:
        from diffmem.auditing.report import write_audit

        write_audit(result, ctx, out, samples=ctx.generated if ctx.denoiser is not None else None)  # sets result.files
    return result


def _open(source, what: str, memory_limit: int, cache: Path, progress: bool, opened: list):
    """A path is opened for chunked reading; an in-memory set is wrapped as it is."""
    from diffmem.auditing.inputs import in_memory_set

    if isinstance(source, (str, Path)):
        s = open_streamed(source, memory_limit=memory_limit, cache_dir=cache, what=what, progress=progress)
        opened.append(s)
        return s
    return in_memory_set(source, what)


def _run_criteria(ctx: AuditInputs, report: bool = False) -> list[Criterion]:
    """Each criterion in turn; with ``report``, a line on stderr as each finishes (:mod:`diffmem.progress`)."""
    from diffmem.progress import Progress

    results, progress = [], Progress(len(CRITERIA), enabled=report)
    for name, fn in CRITERIA:
        results.append(fn(ctx))
        progress.done(f"audit {name}: {results[-1].explanation}")
    return results
