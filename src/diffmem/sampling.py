"""Samplers over any denoiser ``D(x, sigma, labels)`` (EDM, Karras et al. 2022, Algorithm 2).

The probability-flow ODE ``dx/dσ = (x - D(x; σ)) / σ`` is integrated from ``σ_max`` to 0 on the
time steps

    t_i = (σmax^(1/ρ) + i/(N-1) · (σmin^(1/ρ) - σmax^(1/ρ)))^ρ ,   t_N = 0,

with Euler steps and (Heun) a second-order correction on every step but the last. The stochastic
sampler adds EDM's churn: before each step the noise level is raised from ``t_i`` to
``t̂ = (1 + γ)·t_i`` by adding fresh noise, ``γ = min(S_churn/N, √2 - 1)`` inside
``[S_min, S_max]`` and 0 outside.

The solvers :func:`heun`, :func:`euler` and :func:`stochastic` are pure functions of (denoiser,
initial ``x`` at noise level ``t_steps[0]``, time steps, labels, a noise source), as in EDM and
k-diffusion: bring your own latents. :func:`sample` draws the latents, one random stream per sample
from ``(seed, index)``, so a sample depends only on its seed and index, never on the batch it was
drawn in.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
from tqdm.auto import tqdm

from diffmem.denoisers.protocol import Denoiser, denoiser_from_function
from diffmem.errors import InputError, check_number
from diffmem.rng import SAMPLE, check_seed, derive_seed

SAMPLERS = ("heun", "euler", "sde")
SDE_DEFAULTS = {"s_churn": 40.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003}  # EDM's ImageNet settings


def time_steps(steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               dtype=torch.float64) -> torch.Tensor:
    """EDM's noise levels ``t_0 > … > t_{N-1}``, followed by ``t_N = 0``."""
    steps = check_number("steps", steps, lo=1, hi=100_000, integer=True)
    sigma_min = check_number("sigma_min", sigma_min, lo=0, lo_open=True)
    sigma_max = check_number("sigma_max", sigma_max, lo=sigma_min, lo_open=True)
    rho = check_number("rho", rho, lo=0, lo_open=True)
    i = torch.arange(steps, dtype=dtype)
    inv_rho = 1.0 / rho
    t = (sigma_max**inv_rho + i / max(steps - 1, 1) * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([t, torch.zeros(1, dtype=dtype)])


# ---------------------------------------------------------------------------------------------
# Pure solvers.


def _integrate(D, x: torch.Tensor, t_steps: torch.Tensor, labels, *, second_order: bool,
               gamma: Callable[[float], float] | None = None, noise=None, s_noise: float = 1.0) -> torch.Tensor:
    """EDM Algorithm 2 with an optional churn ``gamma(t_i)``; returns x at ``t_steps[-1]`` (= 0)."""
    n = len(t_steps) - 1

    def d(x, t):  # the ODE's direction dx/dσ = (x - D(x; σ)) / σ
        return (x - D(x, torch.full((len(x),), float(t), dtype=x.dtype, device=x.device), labels).to(x.dtype)) / t

    x_next = x
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Churn: raise the noise level temporarily (stochastic sampler only).
        g = gamma(float(t_cur)) if gamma is not None else 0.0
        t_hat = t_cur + g * t_cur
        x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * s_noise * noise(x_cur) if g > 0 else x_cur
        # Euler step.
        d_cur = d(x_hat, t_hat)
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Second-order (Heun) correction, on every step but the last (which ends at σ = 0).
        if second_order and i < n - 1:
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d(x_next, t_next))
    return x_next


def heun(D, x: torch.Tensor, t_steps: torch.Tensor, labels=None) -> torch.Tensor:
    """EDM's deterministic 2nd-order sampler: ``x`` at noise level ``t_steps[0]`` (e.g. latents ·
    t_steps[0]) to the image at ``t_steps[-1] = 0``; 2N - 1 denoiser evaluations."""
    return _integrate(D, x, t_steps, labels, second_order=True)


def euler(D, x: torch.Tensor, t_steps: torch.Tensor, labels=None) -> torch.Tensor:
    """The 1st-order probability-flow ODE sampler; N denoiser evaluations."""
    return _integrate(D, x, t_steps, labels, second_order=False)


def stochastic(D, x: torch.Tensor, t_steps: torch.Tensor, labels=None, *, noise: Callable[[torch.Tensor], torch.Tensor],
               s_churn: float = 40.0, s_min: float = 0.05, s_max: float = 50.0, s_noise: float = 1.003) -> torch.Tensor:
    """EDM's stochastic sampler: Heun with churn ``γ_i = min(S_churn/N, √2 - 1)`` for
    ``t_i ∈ [S_min, S_max]`` (else 0). ``noise(x)`` returns fresh N(0, I) noise shaped like x."""
    n = len(t_steps) - 1
    g = min(s_churn / n, math.sqrt(2) - 1)
    return _integrate(D, x, t_steps, labels, second_order=True, gamma=lambda t: g if s_min <= t <= s_max else 0.0,
                      noise=noise, s_noise=s_noise)


# ---------------------------------------------------------------------------------------------
# Drawing samples.


def sample_generators(seed: int, indices) -> list[torch.Generator]:
    """One independent generator per sample, seeded from (seed, sample index)."""
    return [torch.Generator().manual_seed(derive_seed(seed, SAMPLE, i)) for i in indices]


def _randn(generators, shape, dtype, device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)


def _check_memory(num: int, shape: tuple) -> None:
    """Refuse an output that cannot fit in this machine's memory (instead of a failed allocation)."""
    need = num * math.prod(shape) * 5  # float32 result + its uint8 copy
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise InputError(f"{num} samples of shape {tuple(shape)} need {need / 2**30:.1f} GiB, more than this "
                         f"machine's {have / 2**30:.1f} GiB of memory; draw them in parts (with a seed per part)",
                         param="num")


def _noise_range(D: Denoiser, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """The requested range clamped to the denoiser's (as EDM does for VP nets); refuse an empty one."""
    lo, hi = max(sigma_min, float(D.sigma_min)), min(sigma_max, float(D.sigma_max))
    if not lo < hi:
        raise InputError(f"[{sigma_min:g}, {sigma_max:g}] does not overlap the denoiser's noise range "
                         f"[{D.sigma_min:.4g}, {D.sigma_max:.4g}]", param="sigma_min/sigma_max")
    return lo, hi


def _check_labels(D: Denoiser, labels, num: int) -> torch.Tensor | None:
    if labels is None:
        if D.num_classes:
            raise InputError(f"the denoiser is class-conditional ({D.num_classes} classes): give one label per sample",
                             param="labels")
        return None
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if len(labels) != num:
        raise InputError(f"got {len(labels)} labels for {num} samples", param="labels")
    if D.num_classes is None:  # a wrapped function that did not say: hand the labels through
        return labels
    if not D.num_classes:
        raise InputError("the denoiser is unconditional; it takes no labels", param="labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= D.num_classes):
        raise InputError(f"class indices must lie in 0..{D.num_classes - 1}", param="labels")
    return labels


def sample(denoiser, num: int, shape: tuple | None = None, *, labels=None, sampler: str = "heun", steps: int = 18,
           sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, s_churn: float | None = None,
           seed: int = 0, batch_size: int = 256, device="cpu", dtype=torch.float64, progress: bool = False) -> torch.Tensor:
    """Draw ``num`` images from ``denoiser``; returns float32 (num, C, H, W) in model space on the CPU.

    ``denoiser``: a :class:`~diffmem.denoisers.protocol.Denoiser` (a trained run, the optimum), whose
    ``shape``, ``num_classes`` and noise range are used; or a plain function ``D(x, sigma, labels)``
    together with ``shape`` (C, H, W). ``labels``: None, or ``num`` class indices for a
    class-conditional denoiser. ``sampler``: ``heun`` (deterministic, 2N-1 evaluations), ``euler``
    (N) or ``sde`` (Heun with EDM's churn; ``s_churn`` overrides its default 40). The schedule
    ``[sigma_min, sigma_max]`` is clamped to the denoiser's noise range. Sample ``i`` starts from
    the latent of the random stream ``(seed, i)``; the ODE runs in ``dtype``.
    """
    if not isinstance(denoiser, Denoiser):
        if shape is None:
            raise InputError("a plain function needs shape=(C, H, W) (or wrap it with denoiser_from_function)",
                             param="shape")
        denoiser = denoiser_from_function(denoiser, shape)
    if shape is None and denoiser.shape is None:
        raise InputError("the denoiser does not know its image shape: give shape=(C, H, W)", param="shape")
    shape = tuple(denoiser.shape if shape is None else shape)
    if denoiser.shape is not None and shape != tuple(denoiser.shape):
        raise InputError(f"{shape} differs from the denoiser's image shape {tuple(denoiser.shape)}", param="shape")
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r} (use one of {', '.join(SAMPLERS)})", param="sampler")
    num = check_number("num", num, lo=1, integer=True)
    batch_size = check_number("batch_size", batch_size, lo=1, integer=True)
    seed = check_seed(seed)
    _check_memory(num, shape)
    sigma_min = check_number("sigma_min", sigma_min, lo=0, lo_open=True)
    sigma_max = check_number("sigma_max", sigma_max, lo=sigma_min, lo_open=True)
    t_steps = time_steps(steps, *_noise_range(denoiser, sigma_min, sigma_max), rho, dtype).to(device)
    churn = dict(SDE_DEFAULTS)
    if s_churn is not None and sampler != "sde":
        raise InputError(f"only the sde sampler uses it, not {sampler}", param="s_churn")
    if s_churn is not None:
        churn["s_churn"] = check_number("s_churn", s_churn, lo=0)
    labels = _check_labels(denoiser, labels, num)
    out = torch.empty((num, *shape), dtype=torch.float32)
    with torch.no_grad(), tqdm(total=num, desc="sampling", unit="img", disable=not progress, leave=False) as bar:
        for i0 in range(0, num, batch_size):
            gens = sample_generators(seed, range(i0, min(num, i0 + batch_size)))
            lab = None if labels is None else labels[i0:i0 + len(gens)].to(device)
            x = _randn(gens, shape, dtype, device) * t_steps[0]
            if sampler == "sde":
                x = stochastic(denoiser, x, t_steps, lab, noise=lambda like: _randn(gens, shape, dtype, device), **churn)
            else:
                x = (heun if sampler == "heun" else euler)(denoiser, x, t_steps, lab)
            out[i0:i0 + len(gens)] = x.float().cpu()
            bar.update(len(gens))
    return out
