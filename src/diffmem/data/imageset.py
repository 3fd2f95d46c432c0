"""The in-memory image set every reader returns and every metric consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffmem.errors import InputError

#: Labels are class indices ``0 .. MAX_LABEL - 1``. Models allocate one embedding row per class
#: (and label histograms one bin), so a stray value such as 10**12 in a ``dataset.json`` must be
#: refused, not turned into a terabyte-sized allocation. 2**20 classes is far beyond any data set
#: diffmem targets (``unique`` labels on CIFAR-10's 50 000 images need 50 000).
MAX_LABEL = 2**20


@dataclass
class ImageSet:
    """Images in NCHW layout, plus optional integer labels.

    ``images`` is either ``uint8`` (pixel values 0..255) or ``float32`` already in model space
    ``[-1, 1]``, shape (N, C, H, W). ``labels`` (N,) are class indices in ``0 .. MAX_LABEL - 1``
    (``MAX_LABEL = 2**20``), stored as int64. ``source`` names where the set came from, so errors
    can point at it.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    source: str = "<memory>"
    label_names: list[str] | None = None

    def __post_init__(self):
        if self.images.ndim != 4:
            raise InputError(f"{self.source}: expected images of shape (N, C, H, W), got {self.images.shape}")
        if len(self.images) == 0:
            raise InputError(f"{self.source}: contains no images")
        if self.images.dtype != np.uint8:
            if not np.issubdtype(self.images.dtype, np.floating):
                raise InputError(f"{self.source}: images must be uint8 or float in [-1, 1], got {self.images.dtype}")
            if not np.isfinite(self.images).all():
                raise InputError(f"{self.source}: images contain NaN or Inf")
            lo, hi = float(self.images.min()), float(self.images.max())
            if lo < -1.0 or hi > 1.0:
                raise InputError(f"{self.source}: float images must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}]")
            self.images = self.images.astype(np.float32, copy=False)
        if self.labels is not None:
            self.labels = check_labels(self.labels, self.source)
            if len(self.labels) != len(self.images):
                raise InputError(f"{self.source}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def to_model(self) -> np.ndarray:
        """Images as float32 in model space ``[-1, 1]`` (``uint8 / 127.5 - 1``)."""
        if self.images.dtype == np.uint8:
            return self.images.astype(np.float32) / 127.5 - 1.0
        return self.images

    def to_uint8(self) -> np.ndarray:
        """Images as uint8 (float images are rounded from model space, as saving a PNG would)."""
        return self.images if self.images.dtype == np.uint8 else to_uint8(self.images)


def check_labels(labels, source: str) -> np.ndarray:
    """``labels`` as a flat int64 array of class indices in ``0 .. MAX_LABEL - 1``, else an
    InputError naming ``source``. Checked before the cast, so huge values cannot wrap around."""
    raw = np.asarray(labels).reshape(-1)
    if raw.dtype == np.bool_ or not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == object
                                     or (np.issubdtype(raw.dtype, np.floating) and np.all(np.mod(raw, 1) == 0))):
        raise InputError(f"{source}: labels must be integers (class indices), got {raw.dtype}")
    if raw.size:
        try:
            lo, hi = int(raw.min()), int(raw.max())
        except (TypeError, ValueError):
            raise InputError(f"{source}: labels must be integers (class indices)") from None
        if lo < 0:
            raise InputError(f"{source}: labels must be non-negative integers, found {lo}")
        if hi >= MAX_LABEL:
            raise InputError(f"{source}: labels must be < {MAX_LABEL} (class indices), found {hi}")
    return raw.astype(np.int64)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Quantize model-space values to uint8 pixels: ``round((x + 1) * 127.5)`` clipped to 0..255."""
    return np.clip(np.rint((np.asarray(x, dtype=np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
