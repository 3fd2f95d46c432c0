"""The random-features score model of seed 003 (Bonnaire et al. 2025, §4), at one diffusion time.

Model (DESIGN §1)::

    s_A(x) = A · tanh(W x / √d) / √p,    W ∈ R^(p×d) Gaussian N(0, 1) and frozen,  A ∈ R^(d×p), A(0) = 0.

(``normalize=False``: the authors' ``s_A(x) = A·tanh(Wx/√d)``, without ``1/√p``; the same function
with ``A/√p`` in place of ``A``.)

Data ``x ~ N(0, I_d)``; the forward (Ornstein–Uhlenbeck) process at time ``t`` gives
``x_t = a_t·x + √Δ_t·η`` with ``a_t = e^(-t)``, ``Δ_t = 1 - e^(-2t)``, ``η ~ N(0, I_d)``.
Denoising score-matching loss over ``n`` points (one ``η`` per point)::

    L(A) = (1 / (d·n)) Σ_ν ‖ √Δ_t · s_A(a_t·x_ν + √Δ_t·η_ν) + η_ν ‖².

Its minimum over all functions is ``a_t² = e^(-2t)`` (the true score of ``x_t ~ N(0, I)`` is
``-x_t``), reached by ``s(x) = -x``; ``score_error`` measures ``E‖s_A(x) + x‖²/d`` directly.

Shapes: points are rows, ``x`` (N, d); features ``φ`` (N, p); scores (N, d). Everything is
float64 torch by default (the model is tiny; float64 keeps the loss gaps, ~1e-3, clean).

Feature coefficients (:func:`feature_coefficients`), with ``z ~ N(0, 1)`` standing for ``w·x/√d``
(``‖w‖²/d ≈ 1``): ``μ₁ = E[z·tanh z]`` (the linear part of the feature), ``μ*² = E tanh² z - μ₁²`` (its
nonlinear part), and ``v_t²``, the nonlinear part of the feature *averaged over the noise* at time
t: with ``g(u) = E_ξ tanh(a_t·u + √Δ_t·ξ)``, ``v_t² = E g(u)² - (E g)² - (E[u·g(u)])²``. With fresh
noise at every step only ``g`` is the same from step to step, so the memorization modes (the n
nonlinear directions of the training features) grow at a rate ∝ ``Δ_t·v_t²/ψ_n``: v_t² = 0.0039 at
t = 0.3 and 0.0006 at t = 0.6, far below ``μ*² = 0.0274``.
"""

from __future__ import annotations

import math

import torch


def diffusion_coefficients(t: float) -> tuple[float, float]:
    """``(a_t, Δ_t) = (e^(-t), 1 - e^(-2t))`` of the OU forward process at diffusion time ``t`` > 0."""
    return math.exp(-t), -math.expm1(-2.0 * t)


class RandomFeatureScore:
    """``s_A(x) = A·tanh(W x/√d)/√p`` with frozen Gaussian ``W`` (p, d) and trainable ``A`` (d, p)
    (``normalize=False``: without the ``1/√p``, as the authors).

    ``A`` starts at zero (so ``s_A ≡ 0``). ``W`` is drawn from ``generator`` (a seeded
    :class:`torch.Generator`) so one seed fixes the features.
    """

    def __init__(self, d: int, p: int, *, generator: torch.Generator | None = None, normalize: bool = True,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"):
        self.d, self.p = int(d), int(p)
        self.scale = 1.0 / math.sqrt(self.p) if normalize else 1.0  # 1/√p, or 1 (the authors' model)
        self.W = torch.randn(self.p, self.d, generator=generator, dtype=torch.float64).to(device, dtype)
        self.A = torch.zeros(self.d, self.p, dtype=dtype, device=device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``φ = tanh(x Wᵀ/√d)``: (N, d) → (N, p)."""
        return torch.tanh(x @ self.W.T / math.sqrt(self.d))

    def score_from_features(self, phi: torch.Tensor) -> torch.Tensor:
        """``s = φ Aᵀ/√p`` (or ``φ Aᵀ``): (N, p) → (N, d)."""
        return phi @ self.A.T * self.scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``s_A(x)``: (N, d) → (N, d)."""
        return self.score_from_features(self.features(x))


def noisy_inputs(x: torch.Tensor, eta: torch.Tensor, t: float) -> torch.Tensor:
    """``x_t = a_t·x + √Δ_t·η`` (both (N, d))."""
    a, delta = diffusion_coefficients(t)
    return a * x + math.sqrt(delta) * eta


def dsm_loss(model: RandomFeatureScore, x: torch.Tensor, eta: torch.Tensor, t: float) -> torch.Tensor:
    """``L = (1/(d·N)) Σ_ν ‖√Δ_t·s_A(a_t x_ν + √Δ_t η_ν) + η_ν‖²`` for x, η (N, d); a scalar."""
    _, delta = diffusion_coefficients(t)
    residual = math.sqrt(delta) * model(noisy_inputs(x, eta, t)) + eta
    return residual.pow(2).sum() / (model.d * x.shape[0])


def dsm_loss_and_gradient(model: RandomFeatureScore, x: torch.Tensor, eta: torch.Tensor,
                          t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and its exact gradient in ``A`` (d, p), in closed form (no autograd)::

        R_ν = √Δ·A φ_ν/√p + η_ν            (the residual, (N, d))
        ∂L/∂A = (2/(d·N)) · (√Δ/√p) · Σ_ν R_ν φ_νᵀ  =  (2√Δ / (d·N·√p)) · Rᵀ Φ

    (without the normalization, ``1/√p`` → 1 throughout.)
    """
    _, delta = diffusion_coefficients(t)
    phi = model.features(noisy_inputs(x, eta, t))
    residual = math.sqrt(delta) * model.score_from_features(phi) + eta
    n = x.shape[0]
    loss = residual.pow(2).sum() / (model.d * n)
    grad = (2.0 * math.sqrt(delta) * model.scale / (model.d * n)) * residual.T @ phi
    return loss, grad


def feature_coefficients(t: float) -> dict:
    """``μ₁``, ``μ*²`` and the noise-averaged nonlinear part ``v_t²`` of ``tanh`` at diffusion time
    ``t`` (module docstring), by Gauss–Hermite quadrature (exact to ~1e-12 with 200 nodes)."""
    import numpy as np

    z, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()  # E over z ~ N(0, 1)
    a, delta = diffusion_coefficients(t)
    g = np.tanh(a * z[:, None] + math.sqrt(delta) * z[None, :]) @ w  # g(u) = E_ξ tanh(a u + √Δ ξ), at u = z
    mu1 = float(w @ (z * np.tanh(z)))
    mean_g, lin_g = float(w @ g), float(w @ (z * g))
    return {"mu_1": mu1, "mu_star2": float(w @ np.tanh(z) ** 2) - mu1**2,
            "v_t2": float(w @ g**2) - mean_g**2 - lin_g**2}


def score_error(model: RandomFeatureScore, x: torch.Tensor) -> torch.Tensor:
    """``E‖s_A(x) + x‖²/d`` over the rows of ``x`` (N, d), points drawn from ``x_t ~ N(0, I_d)``
    (the true score of that law is ``-x``); a scalar."""
    return (model(x) + x).pow(2).sum() / (model.d * x.shape[0])
