"""The denoiser protocol every sampler, metric and report relies on.

A denoiser is a callable ``D(x, sigma, labels=None) -> x̂``:

- ``x``: float tensor (N, C, H, W) in model space (``uint8 / 127.5 - 1``), noisy at level ``sigma``;
- ``sigma``: noise standard deviation, a scalar or a tensor (N,);
- ``labels``: None, or int64 class indices (N,) for a class-conditional denoiser;
- returns the estimate of the clean image, same shape as ``x``.

Besides the call it describes itself with four attributes, so nothing has to guess:

- ``shape``: per-image shape (C, H, W);
- ``num_classes``: number of classes it is conditioned on (0 = unconditional);
- ``sigma_min``, ``sigma_max``: the noise range it is valid on (its training range for a VP
  network; ``0`` and ``inf`` for an EDM network or the closed-form optimum). Samplers clamp their
  schedule to it, as EDM does.

Trained networks (:class:`~diffmem.denoisers.precond.EDMPrecond`, ``VPPrecond``), the closed-form
:class:`~diffmem.denoisers.optimal.OptimalDenoiser` and :func:`denoiser_from_function` satisfy it.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    shape: tuple[int, ...]
    num_classes: int
    sigma_min: float
    sigma_max: float

    def __call__(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor: ...


class FunctionDenoiser:
    """A plain function ``fn(x, sigma, labels)`` with the protocol's attributes attached."""

    def __init__(self, fn: Callable, shape, num_classes: int | None = None, sigma_min: float = 0.0,
                 sigma_max: float = math.inf):
        self.fn = fn
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __call__(self, x, sigma, labels=None):
        return self.fn(x, sigma, labels)

    def __repr__(self) -> str:
        return f"FunctionDenoiser({self.fn!r}, shape={self.shape}, num_classes={self.num_classes})"


def denoiser_from_function(fn: Callable, shape, *, num_classes: int | None = None, sigma_min: float = 0.0,
                           sigma_max: float = math.inf) -> FunctionDenoiser:
    """Wrap ``fn(x, sigma, labels)`` (e.g. an imported model) as a :class:`Denoiser` of images of
    per-image ``shape`` (C, H, W). ``num_classes=None`` (unknown) hands labels through unchecked."""
    return FunctionDenoiser(fn, shape, num_classes, sigma_min, sigma_max)
