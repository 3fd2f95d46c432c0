"""Denoising score-matching losses λ(σ)·‖D(y + σn; σ) - y‖² (EDM, Karras et al. 2022).

EDM:  ln σ ~ N(P_mean, P_std²),  λ(σ) = (σ² + σd²)/(σ·σd)².
VP:   t ~ U(ε_t, 1),  σ = σ(t),  λ(σ) = 1/σ².

Each loss splits into :meth:`draw` (the randomness: σ and n for a batch) and :meth:`weighted` (the
deterministic part), so a training loop can draw the randomness for a whole global batch and give
each process its slice. ``loss(D, y, labels, generator)`` does both.
"""

from __future__ import annotations

import torch

from diffmem.denoisers.precond import vp_sigma


class _Loss:
    def draw_sigma(self, shape, generator, device) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, y_shape, generator=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(σ of shape (N, 1, ..., 1), n ~ N(0, I) of shape ``y_shape``), both float32."""
        sigma = self.draw_sigma([y_shape[0]] + [1] * (len(y_shape) - 1), generator, device)
        n = torch.randn(y_shape, generator=generator, device=device, dtype=torch.float32)
        return sigma, n

    def weighted(self, D, y: torch.Tensor, labels, sigma: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Per-element loss λ(σ)·(D(y + σn; σ) - y)², same shape as y."""
        D_yn = D(y + sigma * n, sigma.flatten(), labels)
        return self.weight(sigma) * (D_yn - y) ** 2

    def __call__(self, D, y: torch.Tensor, labels=None, generator=None) -> torch.Tensor:
        sigma, n = self.draw(tuple(y.shape), generator, y.device)
        return self.weighted(D, y, labels, sigma, n)


class EDMLoss(_Loss):
    """EDM loss: log-normal σ, weight (σ² + σd²)/(σ·σd)² (unit effective weight at every σ)."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def draw_sigma(self, shape, generator, device):
        rnd_normal = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2


class VPLoss(_Loss):
    """VP loss: t uniform on [ε_t, 1], σ = σ(t), weight 1/σ²."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.epsilon_t = float(epsilon_t)

    def draw_sigma(self, shape, generator, device):
        rnd_uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
        return vp_sigma(1 + rnd_uniform * (self.epsilon_t - 1), self.beta_d, self.beta_min)

    def weight(self, sigma):
        return 1 / sigma ** 2


LOSSES = {"edm": EDMLoss, "vp": VPLoss}
