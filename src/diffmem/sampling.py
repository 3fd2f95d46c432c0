"""Samplers over any denoiser ``D(x, sigma, labels)`` (EDM, Karras et al. 2022, Algorithm 2).

The probability-flow ODE ``dx/dσ = (x - D(x; σ)) / σ`` is integrated from ``σ_max`` to 0 on the
time steps

    t_i = (σmax^(1/ρ) + i/(N-1) · (σmin^(1/ρ) - σmax^(1/ρ)))^ρ ,   t_N = 0,

with Euler steps and (``heun``) a second-order correction on every step but the last. ``sde`` adds
EDM's stochastic churn: before each step the noise level is raised from ``t_i`` to
``t̂ = (1 + γ)·t_i`` by adding fresh noise, ``γ = min(S_churn/N, √2 - 1)`` inside
``[S_min, S_max]``.

Every sample owns a random stream derived from ``(seed, index)``, so a sample depends only on its
seed and index, never on the batch it was drawn in.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmem.errors import InputError

SAMPLERS = ("heun", "euler", "sde")
SDE_DEFAULTS = {"s_churn": 40.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003}  # EDM's ImageNet settings


def time_steps(steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               dtype=torch.float64) -> torch.Tensor:
    """EDM's noise levels ``t_0 > … > t_{N-1}``, followed by ``t_N = 0``."""
    i = torch.arange(steps, dtype=dtype)
    inv_rho = 1.0 / rho
    t = (sigma_max**inv_rho + i / max(steps - 1, 1) * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([t, torch.zeros(1, dtype=dtype)])


def sample_generators(seed: int, indices) -> list[torch.Generator]:
    """One independent generator per sample, seeded from (seed, sample index)."""
    gens = []
    for i in indices:
        state = np.random.SeedSequence([int(seed), int(i)]).generate_state(2, dtype=np.uint32)
        gens.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return gens


def _randn(generators, shape, dtype, device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)


def sample_batch(
    denoiser,
    latents_gens: list[torch.Generator],
    shape: tuple,
    t_steps: torch.Tensor,
    *,
    labels=None,
    heun: bool = True,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Integrate one batch from pure noise at ``t_steps[0]`` along ``t_steps`` (ending at 0) to
    images (model space, not clipped), in ``t_steps``' dtype and on its device."""
    dtype, device = t_steps.dtype, t_steps.device
    steps = len(t_steps) - 1
    x_next = _randn(latents_gens, shape, dtype, device) * t_steps[0]
    b = len(latents_gens)

    def D(x, t):
        return denoiser(x, torch.full((b,), float(t), dtype=dtype, device=device), labels).to(dtype)

    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Churn: raise the noise level temporarily (sde sampler only).
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_min <= t_cur <= s_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * s_noise * _randn(latents_gens, shape, dtype, device)
        # Euler step.
        d_cur = (x_hat - D(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Second-order (Heun) correction, on every step but the last.
        if heun and i < steps - 1:
            d_prime = (x_next - D(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def sample(
    denoiser,
    num: int,
    shape: tuple,
    *,
    labels=None,
    sampler: str = "heun",
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    s_churn: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device="cpu",
    dtype=torch.float64,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``num`` samples of per-sample ``shape`` from ``denoiser``; returns float32 on the CPU.

    ``labels``: None or ``num`` class indices (one per sample) handed to the denoiser.
    ``sampler``: ``heun`` (deterministic, 2N-1 evaluations), ``euler`` (N evaluations) or ``sde``
    (Heun with EDM's stochastic churn; ``s_churn`` overrides its default of 40).
    """
    if sampler not in SAMPLERS:
        raise InputError(f"--sampler: unknown sampler {sampler!r} (use one of {', '.join(SAMPLERS)})")
    if num <= 0:
        raise InputError(f"--num: must be > 0, got {num}")
    if steps < 1:
        raise InputError(f"--steps: must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise InputError(f"--sigma-min/--sigma-max: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    # A denoiser trained on a limited noise range (VP: σ(ε_t) .. σ(1)) is sampled within it, as EDM does.
    sigma_min = max(sigma_min, float(getattr(denoiser, "sigma_min", 0.0)))
    sigma_max = min(sigma_max, float(getattr(denoiser, "sigma_max", math.inf)))
    churn = dict(SDE_DEFAULTS) if sampler == "sde" else {"s_churn": 0.0}
    if s_churn is not None:
        churn["s_churn"] = float(s_churn)
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if len(labels) != num:
            raise InputError(f"--labels: got {len(labels)} labels for {num} samples")
    t_steps = time_steps(steps, sigma_min, sigma_max, rho, dtype).to(device)
    out = torch.empty((num, *shape), dtype=torch.float32)
    with torch.no_grad(), tqdm(total=num, desc="sampling", unit="img", disable=not progress, leave=False) as bar:
        for i0 in range(0, num, batch_size):
            idx = range(i0, min(num, i0 + batch_size))
            lab = None if labels is None else labels[i0 : i0 + len(idx)].to(device)
            x = sample_batch(denoiser, sample_generators(seed, idx), tuple(shape), t_steps, labels=lab,
                             heun=sampler != "euler", **churn)
            out[i0 : i0 + len(idx)] = x.float().cpu()
            bar.update(len(idx))
    return out
