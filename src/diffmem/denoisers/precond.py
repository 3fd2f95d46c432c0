"""Preconditioning: turn a raw network F into a denoiser D(x, sigma, labels) (EDM, Karras et al. 2022).

    D(x; σ, c) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ), c)

EDM:  c_skip = σd²/(σ²+σd²),  c_out = σ·σd/√(σ²+σd²),  c_in = 1/√(σ²+σd²),  c_noise = ln(σ)/4.
VP:   c_skip = 1,  c_out = -σ,  c_in = 1/√(σ²+1),  c_noise = (M-1)·t(σ),
      σ(t) = √(exp(½β_d t² + β_min t) - 1),  t(σ) = (√(β_min² + 2β_d·ln(1+σ²)) - β_min)/β_d.

Both compute in float32 and return float32 whatever dtype the network runs in (autocast).
"""

from __future__ import annotations

import math

import torch

from diffmem.denoisers.networks import one_hot
from diffmem.errors import InputError


def _sigma_like(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as float32 of shape (N, 1, ..., 1) broadcastable against x."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def _class_labels(labels, n: int, num_classes: int, device) -> torch.Tensor | None:
    """int64 class indices (N,) → float one-hot (N, num_classes) for the net; None if unconditional."""
    if labels is None:
        if num_classes:
            raise InputError(f"this network is class-conditional ({num_classes} classes); labels are required",
                             param="labels")
        return None
    if not num_classes:
        raise InputError("this network is unconditional; it takes no labels", param="labels")
    labels = torch.as_tensor(labels, device=device).reshape(-1)
    if labels.numel() == 1 and n > 1:
        labels = labels.expand(n)
    if labels.numel() != n:
        raise InputError(f"{labels.numel()} labels for {n} inputs", param="labels")
    try:
        return one_hot(labels, num_classes)
    except ValueError as err:
        raise InputError(str(err), param="labels") from None


def vp_sigma(t, beta_d: float = 19.9, beta_min: float = 0.1):
    """VP noise level σ(t) = √(exp(½β_d t² + β_min t) - 1)."""
    t = t if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float64)
    return torch.expm1(0.5 * beta_d * t ** 2 + beta_min * t).sqrt()


def vp_sigma_inv(sigma, beta_d: float = 19.9, beta_min: float = 0.1):
    """Inverse of :func:`vp_sigma`: t(σ) = (√(β_min² + 2β_d·ln(1+σ²)) - β_min) / β_d, evaluated as
    2·ln(1+σ²) / (√(β_min² + 2β_d·ln(1+σ²)) + β_min) to avoid cancellation at small σ in float32."""
    sigma = sigma if torch.is_tensor(sigma) else torch.as_tensor(sigma, dtype=torch.float64)
    log1p_s2 = torch.log1p(sigma ** 2)
    return 2 * log1p_s2 / ((beta_min ** 2 + 2 * beta_d * log1p_s2).sqrt() + beta_min)


class _Precond(torch.nn.Module):
    """Shared plumbing: hold the raw network, convert labels, apply the coefficients."""

    sigma_min = 0.0  # the noise range the denoiser is valid on (the Denoiser protocol)
    sigma_max = math.inf

    def __init__(self, net: torch.nn.Module, *, shape=None, num_classes: int | None = None):
        super().__init__()
        self.net = net
        # (C, H, W) of the images; None when the raw network does not fix it (then give it to sample()).
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        # The raw networks keep EDM's name for it (label_dim).
        self.num_classes = int(net.label_dim if num_classes is None else num_classes)

    def coefficients(self, sigma: torch.Tensor):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = _sigma_like(sigma, x)
        class_labels = _class_labels(labels, x.shape[0], self.num_classes, x.device)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.net(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)


class EDMPrecond(_Precond):
    """EDM preconditioning with data standard deviation ``sigma_data``."""

    def __init__(self, net: torch.nn.Module, sigma_data: float = 0.5, *, shape=None, num_classes: int | None = None):
        super().__init__(net, shape=shape, num_classes=num_classes)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(_Precond):
    """Variance-preserving (DDPM++) preconditioning of Song et al. 2021 in EDM's form."""

    def __init__(self, net: torch.nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5, *, shape=None, num_classes: int | None = None):
        super().__init__(net, shape=shape, num_classes=num_classes)
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t):
        return vp_sigma(t, self.beta_d, self.beta_min)

    def sigma_inv(self, sigma):
        return vp_sigma_inv(sigma, self.beta_d, self.beta_min)

    def coefficients(self, sigma: torch.Tensor):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


PRECONDS = {"edm": EDMPrecond, "vp": VPPrecond}

