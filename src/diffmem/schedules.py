"""Training schedules (EDM, Karras et al. 2022), counted in training images ``nimg = step · batch``:

    lr(nimg)    = lr · min(nimg / warmup_images, 1)
    β_ema(nimg) = 0.5 ^ (batch / h(nimg)),  h(nimg) = halflife · nimg / ema_warmup  during the warm-up
                                                   = rampup · nimg                 on EDM's ramp
    and, once warmed up, β = the rate the user gave (or 0.5 ^ (batch / halflife) for a half-life).

and the order in which images are seen: one random permutation of the data set per epoch, the
global batch at ``step`` being images ``step·batch .. (step+1)·batch - 1`` of their concatenation.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from diffmem.rng import PERMUTATION, derive_seed, generator


def learning_rate(nimg: int, lr: float, warmup_images: int) -> float:
    """EDM's linear warm-up: ``lr · min(nimg / warmup_images, 1)``; no warm-up when it is 0."""
    return lr * min(nimg / warmup_images, 1.0) if warmup_images > 0 else lr


def ema_beta(nimg: int, batch: int, halflife_images: float, rampup: float = 0.0, *, rate: float | None = None,
             warmup_images: int = 0) -> float:
    """EMA decay per step after ``nimg`` training images: while warming up, that of a half-life that
    grows linearly over ``warmup_images`` (Gu et al.: the EMA warmed up over the first epochs), or
    EDM's ramp ``min(halflife, rampup · nimg)``; afterwards ``rate`` exactly when given, else the
    decay of ``halflife_images``."""
    if warmup_images and nimg < warmup_images:
        halflife = halflife_images * nimg / warmup_images
    elif rampup and rampup * nimg < halflife_images:
        halflife = rampup * nimg
    else:
        return rate if rate is not None else 0.5 ** (batch / max(halflife_images, 1e-8))
    return 0.5 ** (batch / max(halflife, 1e-8))


def halflife_from_rate(rate: float, batch: int) -> float:
    """The half-life in images of a constant per-step EMA rate: ``rate ^ (h / batch) = 1/2``."""
    return 0.0 if rate == 0 else batch * math.log(0.5) / math.log(rate)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """``θ_ema ← β·θ_ema + (1 - β)·θ_net`` for every parameter (written as ``lerp(θ_net, θ_ema, β)``)."""
    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))


@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(derive_seed(seed, PERMUTATION, epoch)))


def global_batch_indices(seed: int, step: int, batch: int, n: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: images ``step·batch ..`` of the stream formed by
    concatenating one random permutation of 0..n-1 per epoch."""
    start, end = step * batch, (step + 1) * batch
    parts = []
    for epoch in range(start // n, (end - 1) // n + 1):
        perm = _epoch_permutation(seed, epoch, n)
        parts.append(perm[max(start - epoch * n, 0):min(end - epoch * n, n)])
    return torch.cat(parts)
