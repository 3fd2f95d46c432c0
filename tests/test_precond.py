"""Preconditioning coefficients and losses against the formulas, computed independently in numpy."""

import numpy as np
import pytest
import torch

from diffmem.denoisers.networks import build_network
from diffmem.denoisers.precond import EDMPrecond, VPPrecond, vp_sigma, vp_sigma_inv
from diffmem.errors import InputError
from diffmem.losses import EDMLoss, VPLoss


class Probe(torch.nn.Module):
    """A raw network that records its inputs and returns a fixed function of them."""

    def __init__(self, label_dim=0):
        super().__init__()
        self.label_dim = label_dim
        self.seen = {}

    def forward(self, x, noise_labels, class_labels=None):
        self.seen = dict(x=x.detach().clone(), noise=noise_labels.detach().clone(),
                         labels=None if class_labels is None else class_labels.detach().clone())
        return torch.tanh(x) + noise_labels.reshape(-1, *([1] * (x.ndim - 1)))


SIGMAS = np.array([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])


def _x(seed=0, shape=(6, 2, 4, 4)):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def test_edm_coefficients_match_formulas():
    x = _x()
    probe = Probe()
    D = EDMPrecond(probe, sigma_data=0.5)
    out = D(x, torch.tensor(SIGMAS, dtype=torch.float32))
    s, sd = SIGMAS.reshape(-1, 1, 1, 1), 0.5
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / np.sqrt(s**2 + sd**2)
    c_in = 1 / np.sqrt(s**2 + sd**2)
    c_noise = np.log(SIGMAS) / 4
    xn = x.numpy().astype(np.float64)
    np.testing.assert_allclose(probe.seen["x"].numpy(), c_in * xn, rtol=1e-5)
    np.testing.assert_allclose(probe.seen["noise"].numpy(), c_noise, rtol=1e-5)
    F = np.tanh(c_in * xn) + c_noise.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(out.numpy(), c_skip * xn + c_out * F, rtol=1e-4, atol=1e-5)
    assert out.dtype == torch.float32


def test_vp_coefficients_match_formulas():
    x = _x(1)
    probe = Probe()
    D = VPPrecond(probe, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5)
    out = D(x.double(), torch.tensor(SIGMAS))  # float64 in: computed (and returned) in float32
    s = SIGMAS.reshape(-1, 1, 1, 1)
    t = (np.sqrt(0.1**2 + 2 * 19.9 * np.log1p(SIGMAS**2)) - 0.1) / 19.9
    c_in = 1 / np.sqrt(s**2 + 1)
    c_noise = 999 * t
    xn = x.numpy().astype(np.float64)
    np.testing.assert_allclose(probe.seen["x"].numpy(), c_in * xn, rtol=1e-5)
    np.testing.assert_allclose(probe.seen["noise"].numpy(), c_noise, rtol=1e-4)
    F = np.tanh(c_in * xn) + c_noise.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(out.numpy(), xn - s * F, rtol=1e-4, atol=1e-4)
    assert out.dtype == torch.float32


def test_vp_sigma_round_trip_and_range():
    t = np.linspace(1e-5, 1, 101)
    sigma_np = np.sqrt(np.expm1(0.5 * 19.9 * t**2 + 0.1 * t))
    sigma = vp_sigma(torch.tensor(t))
    np.testing.assert_allclose(sigma.numpy(), sigma_np, rtol=1e-12)
    np.testing.assert_allclose(vp_sigma_inv(sigma).numpy(), t, rtol=1e-9, atol=1e-14)
    D = VPPrecond(Probe())
    assert D.sigma_min == pytest.approx(sigma_np[0]) and D.sigma_max == pytest.approx(sigma_np[-1])
    assert D.sigma_max == pytest.approx(152.0, rel=1e-2)  # EDM: sigma_max of VP is about 152


def test_scalar_sigma_and_flat_inputs():
    probe = Probe()
    D = EDMPrecond(probe)
    x = _x(2, shape=(5, 3))  # (N, d) input, as for the MLP
    a = D(x, 0.7)
    b = D(x, torch.full((5,), 0.7))
    assert a.shape == (5, 3)
    torch.testing.assert_close(a, b)
    s, sd, xn = 0.7, 0.5, x.numpy().astype(np.float64)  # the EDM formulas at σ = 0.7, σd = 0.5
    c_skip, c_out, c_in, c_noise = sd**2 / (s**2 + sd**2), s * sd / np.hypot(s, sd), 1 / np.hypot(s, sd), np.log(s) / 4
    np.testing.assert_allclose(probe.seen["noise"].numpy(), np.full(5, c_noise), rtol=1e-6)
    np.testing.assert_allclose(a.numpy(), c_skip * xn + c_out * (np.tanh(c_in * xn) + c_noise), rtol=1e-5, atol=1e-6)


def test_labels_become_one_hot_and_are_checked():
    probe = Probe(label_dim=3)
    D = EDMPrecond(probe)
    x = _x(3, shape=(4, 1, 2, 2))
    D(x, 1.0, torch.tensor([0, 2, 1, 2]))
    np.testing.assert_array_equal(probe.seen["labels"].numpy(), np.eye(3)[[0, 2, 1, 2]])
    with pytest.raises(InputError, match="labels"):
        D(x, 1.0)  # conditional net needs labels
    with pytest.raises(InputError, match="labels"):
        D(x, 1.0, torch.tensor([0, 1, 3, 0]))  # out of range
    with pytest.raises(InputError, match="unconditional"):
        EDMPrecond(Probe())(x, 1.0, torch.tensor([0, 1, 1, 0]))


def _coefficients_np(kind, s):
    """(c_skip, c_out, c_in, c_noise) from the module docstring's formulas, in float64."""
    if kind == "edm":
        sd = 0.5
        return sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), 1 / np.sqrt(s**2 + sd**2), np.log(s) / 4
    t = (np.sqrt(0.1**2 + 2 * 19.9 * np.log1p(s**2)) - 0.1) / 19.9
    return np.ones_like(s), -s, 1 / np.sqrt(s**2 + 1), 999 * t


@pytest.mark.parametrize("kind", ["edm", "vp"])
def test_real_network_through_precond(kind):
    """D(x; σ, c) = c_skip·x + c_out·F(c_in·x; c_noise, one_hot(c)) with a real (perturbed) U-Net."""
    torch.manual_seed(0)
    net = build_network("ddpmpp", img_resolution=8, in_channels=1, num_classes=2, preset="tiny", channels=8).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the near-zero output layers away from zero so F matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    D = {"edm": EDMPrecond, "vp": VPPrecond}[kind](net)
    x = _x(4, shape=(3, 1, 8, 8))
    sigmas = np.array([0.1, 1.0, 10.0])
    with torch.no_grad():
        out = D(x, torch.tensor(sigmas, dtype=torch.float32), torch.tensor([0, 1, 0]))
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in _coefficients_np(kind, sigmas))
        xn = x.numpy().astype(np.float64)
        F = net(torch.from_numpy(c_in * xn).float(), torch.from_numpy(c_noise.ravel()).float(),
                torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])).double().numpy()
    assert out.shape == x.shape and out.dtype == torch.float32
    assert np.abs(c_out * F).max() > 0.05  # the network's part is not negligible
    np.testing.assert_allclose(out.numpy(), c_skip * xn + c_out * F, rtol=1e-4, atol=1e-4)


def test_edm_loss_weighting():
    y = _x(5, shape=(4096, 1, 1, 1)) * 0.1
    loss_fn = EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    g = torch.Generator().manual_seed(0)
    sigma, n = loss_fn.draw(tuple(y.shape), g)
    # D = identity: error = σ·n, so the loss is λ(σ)·σ²·n² with λ = (σ²+σd²)/(σ·σd)².
    loss = loss_fn.weighted(lambda x, s, labels: x, y, None, sigma, n)
    s, nn = sigma.double().numpy(), n.double().numpy()
    expected = (s**2 + 0.25) / (s * 0.5) ** 2 * (s * nn) ** 2
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-3, atol=1e-6)
    # ln σ ~ N(-1.2, 1.2²)
    log_s = np.log(s).ravel()
    assert abs(log_s.mean() + 1.2) < 0.06 and abs(log_s.std() - 1.2) < 0.05
    # draw + weighted with the same generator state is what __call__ does
    again = loss_fn(lambda x, s, labels: x, y, None, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, loss)


def test_vp_loss_weighting_and_sigma_range():
    y = torch.zeros(4096, 2)
    loss_fn = VPLoss(beta_d=19.9, beta_min=0.1, epsilon_t=1e-5)
    sigma, n = loss_fn.draw(tuple(y.shape), torch.Generator().manual_seed(1))
    assert sigma.shape == (4096, 1)
    # σ = σ(t), t ~ U(ε_t, 1): t(σ) is uniform on [ε_t, 1]
    t = (np.sqrt(0.01 + 2 * 19.9 * np.log1p(sigma.double().numpy() ** 2)) - 0.1) / 19.9
    assert t.min() >= 1e-5 - 1e-7 and t.max() <= 1 + 1e-6
    assert abs(t.mean() - 0.5) < 0.02
    # D = identity: error σn, weight 1/σ²: the loss is n² exactly
    loss = loss_fn.weighted(lambda x, s, labels: x, y, None, sigma, n)
    np.testing.assert_allclose(loss.numpy(), n.numpy() ** 2, rtol=1e-4, atol=1e-6)
