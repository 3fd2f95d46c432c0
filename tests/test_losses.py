"""Losses: the σ draws equal an independent computation from the same generator, exactly."""

import numpy as np
import pytest
import torch

from diffmem.losses import EDMLoss, VPLoss


def _vp_sigma_np(t, beta_d=19.9, beta_min=0.1):
    return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))


@pytest.mark.parametrize("epsilon_t", [1e-5, 0.5])
def test_vp_sigma_is_sigma_of_t_uniform_on_eps_to_one(epsilon_t):
    shape = (4096, 1, 1, 1)
    loss_fn = VPLoss(beta_d=19.9, beta_min=0.1, epsilon_t=epsilon_t)
    sigma, n = loss_fn.draw(shape, torch.Generator().manual_seed(3))

    # The same generator, drawn independently: u ~ U[0, 1), then n ~ N(0, I).
    g = torch.Generator().manual_seed(3)
    u = torch.rand(shape, generator=g).numpy()
    n_expected = torch.randn(shape, generator=g)
    # t = 1 + u·(ε_t - 1) ~ U(ε_t, 1] as in EDM's VPLoss, rounded to float32 as the loss computes it
    # (near ε_t = 1e-5 that rounding alone moves σ by 3e-5 relative); σ(t) then in float64.
    t = (np.float32(1) + u * np.float32(epsilon_t - 1)).astype(np.float64)
    np.testing.assert_allclose(sigma.double().numpy(), _vp_sigma_np(t), rtol=1e-6)
    torch.testing.assert_close(n, n_expected, rtol=0, atol=0)
    assert sigma.dtype == torch.float32 and n.dtype == torch.float32

    # Every σ in [σ(ε_t), σ(1)]; with ε_t = 0.5 a draw of t from U(0, 1) puts half of them below.
    lo, hi = _vp_sigma_np(epsilon_t), _vp_sigma_np(1.0)
    assert sigma.min().item() >= lo * (1 - 1e-6) and sigma.max().item() <= hi * (1 + 1e-6)
    if epsilon_t == 0.5:
        assert sigma.min().item() < _vp_sigma_np(0.51)  # the draws do reach down to σ(ε_t)


def test_edm_sigma_is_lognormal_from_the_same_generator():
    shape = (1000, 3)
    loss_fn = EDMLoss(P_mean=-0.4, P_std=0.7)
    sigma, n = loss_fn.draw(shape, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    z = torch.randn((shape[0], 1), generator=g).double().numpy()
    np.testing.assert_allclose(sigma.double().numpy(), np.exp(z * 0.7 - 0.4), rtol=1e-6)
    torch.testing.assert_close(n, torch.randn(shape, generator=g), rtol=0, atol=0)


@pytest.mark.parametrize("loss_fn,weight", [
    (EDMLoss(sigma_data=0.5), lambda s: (s**2 + 0.25) / (s * 0.5) ** 2),
    (VPLoss(), lambda s: 1 / s**2),
])
def test_weighted_loss_value(loss_fn, weight):
    """λ(σ)·(D(y + σn; σ) - y)² for a denoiser D(x; σ) = x/2 + σ/10, recomputed in float64."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 1, 2, 2, generator=g)
    sigma, n = loss_fn.draw(tuple(y.shape), g)
    seen = {}

    def D(x, s, labels):
        seen["sigma"], seen["labels"] = s, labels
        return x / 2 + s.reshape(-1, 1, 1, 1) / 10

    loss = loss_fn.weighted(D, y, "L", sigma, n)
    s, yn, nn = (v.double().numpy() for v in (sigma, y, n))
    expected = weight(s) * ((yn + s * nn) / 2 + s / 10 - yn) ** 2
    np.testing.assert_allclose(loss.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(seen["sigma"], sigma.flatten(), rtol=0, atol=0)
    assert seen["labels"] == "L"


@pytest.mark.parametrize("loss_cls", [EDMLoss, VPLoss])
@pytest.mark.parametrize("c", [0.0, 0.05, 2.0])
def test_tikhonov_loss_is_minimized_by_the_regularized_optimum(loss_cls, c):
    """On seed 002's toy: at a fixed noisy point x and σ, the expected loss over the training points
    (posterior weights w_i = softmax(-‖x - y_i‖²/2σ²), each with the noise n_i = (x - y_i)/σ that
    leads to x) is Σ_i w_i·weighted(D; y_i, n_i). Its gradient in D vanishes at the closed-form
    Tikhonov optimum D_c (OptimalDenoiser, item 2) and nowhere else (the loss is strictly convex)."""
    from scipy.special import softmax

    from diffmem.data.points import make_points
    from diffmem.denoisers.optimal import OptimalDenoiser

    y = torch.from_numpy(make_points("toy2d", 20).points.astype(np.float64))
    loss_fn = loss_cls(tikhonov=c)
    for x0, s in (([0.3, -0.2], 0.4), ([1.5, 1.0], 1.3), ([-0.7, 0.1], 0.08)):
        x = torch.tensor([x0], dtype=torch.float64)
        sigma = torch.full((len(y), 1), s, dtype=torch.float64)
        w = torch.from_numpy(softmax(-((x - y) ** 2).sum(1).numpy() / (2 * s**2)))
        d_c = OptimalDenoiser(y.numpy(), regularize=("tikhonov", c))(x, torch.tensor([s], dtype=torch.float64))
        for shift in (0.0, 0.01):
            out = (d_c + shift).clone().requires_grad_(True)
            total = (w[:, None] * loss_fn.weighted(lambda xx, ss, ll: out.expand_as(xx), y, None, sigma, (x - y) / s)).sum()
            (grad,) = torch.autograd.grad(total, out)
            if shift == 0.0:
                assert grad.abs().max() < 1e-9 * (1 + float(loss_fn.weight(torch.tensor(s))) * (1 + c / s**2))
            else:
                assert grad.abs().max() > 1e-4
