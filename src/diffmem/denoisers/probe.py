"""The one check every loaded model passes before it is used, and the one shape check between a
model and an image set.

:func:`check_denoiser` calls ``D`` once on three noisy test images at a low, a middle and a high
noise level inside its range: a model that fails, returns another shape, or returns NaN or ±Inf
(diverged weights, a broken export) is refused then, naming the file, instead of being audited as
"clean" or sampled into blank images. :func:`check_shape` refuses an image set whose per-image
shape is not the model's (a membership AUC or loss gap on resized images means nothing).
"""

from __future__ import annotations

import math

import torch

from diffmem.errors import InputError

MAX_ELEMENTS = 1 << 22  # values per image (C·H·W) a model may declare: 3 x 1182 x 1182
TEST_SIGMAS = (0.02, 1.0, 80.0)  # low, middle, high (clamped to the model's range)


def check_model_shape(shape, path, param: str = "model") -> tuple[int, ...]:
    """A declared per-sample shape: 1 to 3 positive whole numbers (not booleans) of at most
    :data:`MAX_ELEMENTS` values in all."""
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 3 or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise InputError(f"{path}: its shape must be [C, H, W] (positive whole numbers), got {shape!r}", param=param)
    if math.prod(shape) > MAX_ELEMENTS:
        raise InputError(f"{path}: shape {list(shape)} has more than {MAX_ELEMENTS} values per image", param=param)
    return tuple(shape)


def check_denoiser(D, path, param: str = "model", device="cpu"):
    """Call ``D`` on three noisy test inputs (σ low, middle, high within its range); refuse a failure,
    a wrong output shape, or NaN/Inf output (InputError naming ``param`` and ``path``). Returns D."""
    shape = check_model_shape(tuple(getattr(D, "shape", ()) or ()), path, param)
    lo, hi = float(getattr(D, "sigma_min", 0.0)), float(getattr(D, "sigma_max", math.inf))
    sigma = torch.tensor([min(max(s, lo), hi) for s in TEST_SIGMAS])
    x = sigma.reshape(-1, *[1] * len(shape)) * torch.randn((len(sigma), *shape), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(len(sigma)) % D.num_classes if getattr(D, "num_classes", 0) else None
    try:
        out = D(x.to(device), sigma.to(device), None if labels is None else labels.to(device))
    except Exception as err:  # noqa: BLE001 -- any failure of a foreign model is the file's fault
        text = str(err).strip().splitlines()
        raise InputError(f"{path}: the model fails on a test input of shape {tuple(x.shape)} "
                         f"({type(err).__name__}: {text[-1] if text else ''})", param=param) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{path}: the model returns {got} for input {tuple(x.shape)}; a denoiser returns its "
                         f"input's shape", param=param)
    bad = [f"{s:g}" for s, row in zip(sigma.tolist(), out.reshape(len(sigma), -1)) if not torch.isfinite(row).all()]
    if bad:
        raise InputError(f"{path}: the model returns NaN or Inf at sigma {', '.join(bad)} (diverged or broken "
                         f"weights); refusing to measure or sample it", param=param)
    return D


def check_shape(D, images, param: str, what: str = "images"):
    """Refuse an image set (an ImageSet, array or tensor (N, C, H, W), or its per-image ``shape`` as
    a tuple) unless its per-image shape is the model's (``D.shape``); InputError naming ``param``."""
    if getattr(D, "shape", None) is None:  # a bare callable says nothing about its images
        return
    shape = tuple(images) if isinstance(images, tuple) else tuple(getattr(images, "images", images).shape[1:])
    if shape != tuple(D.shape):
        raise InputError(f"{what} have shape {'x'.join(map(str, shape))} but the model's images are "
                         f"{'x'.join(map(str, D.shape))}", param=param)
