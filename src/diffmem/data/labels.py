"""One grammar for ``--labels``: how a training set is labelled, and which classes samples are drawn from.

    none | true | random[:C] | unique | K | k1,k2,...

=============  =====================================================  ====================================
form           ``diffmem data`` (labels of a training set)            ``diffmem sample`` (conditioning)
=============  =====================================================  ====================================
``none``       no labels (unconditional training)                     no labels (unconditional sampling)
``true``       the source's labels                                    the training set's labels, cycled
``random:C``   i.i.d. uniform in 0..C-1 (seeded, nested)              --
``random``     --                                                     uniform over the model's classes
``unique``     label = image index (every image its own class)        --
``K``          --                                                     every sample class K
``k1,k2,...``  --                                                     the list, cycled over the samples
=============  =====================================================  ====================================

:func:`parse_labels` parses the grammar once; each use names the forms it takes (:data:`DATA_FORMS`,
:data:`SAMPLE_FORMS`) and refuses the others in one line naming ``labels`` and the forms it takes.
Random draws use the stream ``(seed, LABELS)`` of :mod:`diffmem.rng`. Labels are class indices
below :data:`~diffmem.data.imageset.MAX_LABEL`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from diffmem.data.imageset import MAX_LABEL
from diffmem.errors import InputError, check_number
from diffmem.rng import LABELS, check_seed, numpy_rng

__all__ = [
    "LabelSpec",
    "FORMS",
    "DATA_FORMS",
    "SAMPLE_FORMS",
    "parse_labels",
    "parse_label_mode",
    "assign_labels",
    "conditioning_labels",
]

#: Every form of the grammar, in the order messages list them.
FORMS = ("none", "true", "random:C", "random", "unique", "K", "k1,k2,...")
#: The forms that label a training set (``diffmem data``, :class:`~diffmem.data.spec.DataSpec`).
DATA_FORMS = ("none", "true", "random:C", "unique")
#: The forms that pick the classes samples are conditioned on (``diffmem sample``).
SAMPLE_FORMS = ("none", "true", "random", "K", "k1,k2,...")

_USE = {DATA_FORMS: "a training set", SAMPLE_FORMS: "sampling"}
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class LabelSpec:
    """One parsed ``--labels`` value."""

    form: str  # one of FORMS
    count: int | None = None  # C of random:C
    classes: tuple[int, ...] = ()  # the class indices of K or k1,k2,...

    @property
    def kind(self) -> str:
        """``none``, ``true``, ``random``, ``unique`` or ``classes`` (K and k1,k2,...)."""
        return "classes" if self.form in ("K", "k1,k2,...") else self.form.partition(":")[0]


def _forms_text(forms) -> str:
    shown = [f"random:C (1 <= C <= {MAX_LABEL})" if f == "random:C" else f for f in forms]
    if "K" in shown or "k1,k2,..." in shown:
        shown[max(i for i, f in enumerate(shown) if f in ("K", "k1,k2,..."))] += " (class indices)"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _expected(forms, use: str | None, text, param: str, why: str = "") -> InputError:
    where = f" for {use}" if use else ""
    return InputError(f"expected {_forms_text(forms)}{where}, got {text!r}{why}", param=param)


def parse_labels(text, forms=FORMS, *, use: str | None = None, param: str = "labels") -> LabelSpec:
    """Parse ``none | true | random[:C] | unique | K | k1,k2,...``, accepting only ``forms``.

    A value outside the grammar, or of a form this use does not take, raises one InputError naming
    ``param`` and listing the forms taken (``use`` says for what: "a training set", "sampling";
    it defaults from the known form sets).
    """
    forms = tuple(forms)
    use = use if use is not None else _USE.get(forms)
    if not isinstance(text, str):
        raise _expected(forms, use, text, param)
    value = text.strip()
    head, colon, arg = value.partition(":")
    spec = None
    if value in ("none", "true", "unique", "random"):
        spec = LabelSpec(value)
    elif head == "random" and colon:
        if not arg.strip().isdigit() or not 1 <= int(arg) <= MAX_LABEL:
            raise _expected(forms, use, text, param)
        spec = LabelSpec("random:C", count=int(arg))
    elif value and all(_INT.fullmatch(item.strip()) for item in value.split(",")):
        classes = tuple(int(item) for item in value.split(","))
        bad = next((c for c in classes if not 0 <= c < MAX_LABEL), None)
        if bad is not None:
            raise InputError(f"class {bad} is not a class index (0 <= K < {MAX_LABEL})", param=param)
        spec = LabelSpec("K" if len(classes) == 1 and "," not in value else "k1,k2,...", classes=classes)
    if spec is None:
        raise _expected(forms, use, text, param)
    if spec.form not in forms:
        others = [u for f, u in _USE.items() if spec.form in f and f != forms]
        why = f" ({spec.form} is for {others[0]})" if others else ""
        raise _expected(forms, use, text, param, why)
    return spec


def parse_label_mode(spec: str) -> tuple[str, int | None]:
    """A training set's labels, ``none | true | random:C | unique`` -> ``(mode, C)`` (``C`` only for
    ``random``); the other forms of the grammar are refused, naming ``labels``."""
    parsed = parse_labels(spec, DATA_FORMS)
    return parsed.kind, parsed.count


def assign_labels(labels: np.ndarray | None, mode: str, seed: int = 0, *, n: int | None = None) -> np.ndarray | None:
    """Labels for a training set of ``n`` images (``n`` defaults to ``len(labels)``).

    ``none`` -> None; ``true`` -> ``labels``; ``random:C`` -> i.i.d. uniform in 0..C-1 from the
    stream ``(seed, LABELS)`` of :mod:`diffmem.rng` (nested: the labels of the first ``m`` images do
    not depend on ``n``); ``unique`` -> ``0..n-1`` (every image its own class; ``n`` must stay
    below :data:`~diffmem.data.imageset.MAX_LABEL`). Returns int64 (n,) or None.
    """
    kind, classes = parse_label_mode(mode)
    seed = check_seed(seed)
    if n is None:
        if labels is None and kind in ("random", "unique"):
            raise ValueError("assign_labels: pass n when labels is None")
        n = 0 if labels is None else len(labels)
    if kind == "none":
        return None
    if kind == "true":
        if labels is None:
            raise InputError("true: the source has no labels; use none, random:C or unique", param="labels")
        return np.asarray(labels, dtype=np.int64)
    if kind == "random":
        return numpy_rng(seed, LABELS).integers(0, classes, size=n, dtype=np.int64)
    if n > MAX_LABEL:
        raise InputError(f"unique: {n} images would need labels up to {n - 1}, but labels must be "
                         f"< {MAX_LABEL} (class indices)", param="labels")
    return np.arange(n, dtype=np.int64)


def conditioning_labels(spec: str | None, num: int, num_classes: int, seed: int = 0,
                        train_labels=None) -> np.ndarray | None:
    """The class each of ``num`` samples is conditioned on, from ``--labels`` (``SAMPLE_FORMS``).

    ``none`` (or None) -> None (unconditional); ``true`` -> ``train_labels`` cycled over the samples
    (needs them: a trained network does not keep its training labels); ``random`` -> uniform over
    the model's classes (the classes present in ``train_labels`` when given, else
    ``0..num_classes-1``), from the stream ``(seed, LABELS)``; ``K`` -> every sample class K;
    ``k1,k2,...`` -> the list cycled. ``num_classes`` is the model's (0: unconditional). Classes
    must lie in ``0..num_classes-1`` and, given ``train_labels``, have training images.
    Returns int64 (num,) or None.
    """
    parsed = parse_labels("none" if spec is None else spec, SAMPLE_FORMS)
    if parsed.kind == "none":
        return None
    num = check_number("num", num, lo=1, integer=True)
    seed = check_seed(seed)
    num_classes = check_number("num_classes", num_classes, lo=0, integer=True)
    if num_classes == 0:
        raise InputError("the training set / network has no classes; use none", param="labels")
    present = None if train_labels is None else np.unique(np.asarray(train_labels, dtype=np.int64))
    if parsed.kind == "true":
        if train_labels is None:
            raise InputError("true needs the training set's labels, which a trained network does not keep; "
                             "use random, K or k1,k2,... (or sample --optimal --train T)", param="labels")
        return np.resize(np.asarray(train_labels, dtype=np.int64), num)
    if parsed.kind == "random":
        rng = numpy_rng(seed, LABELS)
        if present is None or len(present) == num_classes:  # classes 0..num_classes-1
            return rng.integers(0, num_classes, size=num, dtype=np.int64)
        return present[rng.integers(0, len(present), size=num, dtype=np.int64)]
    bad = [c for c in parsed.classes if c >= num_classes]
    if bad:
        raise InputError(f"class {bad[0]} is outside 0..{num_classes - 1}", param="labels")
    if present is not None:
        empty = [c for c in parsed.classes if c not in present]
        if empty:
            raise InputError(f"class {empty[0]} has no training images", param="labels")
    return np.resize(np.asarray(parsed.classes, dtype=np.int64), num)
