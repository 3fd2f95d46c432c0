"""The closed-form optimum and its regularized variants against direct formulas, and sampling it."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from diffmem.data.imageset import to_uint8
from diffmem.data.sources import load_source
from diffmem.data.subsets import class_balanced_subset
from diffmem.denoisers.optimal import OptimalDenoiser, parse_regularize_flag
from diffmem.errors import InputError
from diffmem.metrics.memorization import memorization
from diffmem.sampling import sample


def direct(x, sigma, y):
    """softmax(-‖x - y_i‖² / 2σ²) · y, plus log Σ exp(ℓ_i) of the unnormalized kernels, in float64."""
    d2 = ((x[:, None, :] - y[None]) ** 2).sum(-1)
    logits = -d2 / (2 * sigma[:, None] ** 2)
    return softmax(logits, axis=1) @ y, logsumexp(logits, axis=1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (300, 12))
    x = y[rng.integers(0, 300, 40)] + rng.normal(0, 1, (40, 12)) * rng.choice([0.002, 0.05, 0.5, 5, 80], 40)[:, None]
    sigma = rng.choice([0.002, 0.05, 0.5, 5.0, 80.0], 40)
    return x, sigma, y


def test_optimum_matches_direct_formula(data):
    x, sigma, y = data
    D = OptimalDenoiser(y, chunk=37)  # chunks that do not divide n exercise the running log-sum-exp
    out = D(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    np.testing.assert_allclose(out, direct(x, sigma, y)[0], rtol=0, atol=1e-10)


def test_tikhonov_matches_formula(data):
    x, sigma, y = data
    c = 0.3
    out = OptimalDenoiser(y, regularize=("tikhonov", c), chunk=64)(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    xbar = direct(x, sigma, y)[0]
    np.testing.assert_allclose(out, (c * x + sigma[:, None] ** 2 * xbar) / (sigma[:, None] ** 2 + c), atol=1e-10)
    zero = OptimalDenoiser(y, regularize=("tikhonov", 0.0))(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    np.testing.assert_allclose(zero, xbar, atol=1e-10)


@pytest.mark.parametrize("tau", [1e-30, 1e-3, 1.0, 1e3])
def test_empirical_bayes_floor_matches_formula(data, tau):
    x, sigma, y = data
    out = OptimalDenoiser(y, regularize=("eb", tau), chunk=50)(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    # Score Σ_i w_i (y_i - x)/σ² with w_i = exp(ℓ_i)/max(S, τ), ℓ_i = -‖x - y_i‖²/2σ² (the authors'
    # unnormalized kernels); D = x + σ² score.
    d2 = ((x[:, None, :] - y[None]) ** 2).sum(-1)
    ell = -d2 / (2 * sigma[:, None] ** 2)
    log_norm = np.maximum(logsumexp(ell, axis=1), np.log(tau))
    w = np.exp(ell - log_norm[:, None])
    expected = x + (w[:, :, None] * (y[None] - x[:, None])).sum(1)
    np.testing.assert_allclose(out, expected, atol=1e-9)


def test_float32_small_sigma_does_not_underflow(data):
    x, _, y = data
    sigma = np.full(len(x), 0.002)
    out = OptimalDenoiser(y, dtype=torch.float32)(torch.from_numpy(x).float(), torch.from_numpy(sigma).float())
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), direct(x, sigma, y)[0], atol=1e-4)


def test_conditional_optimum_uses_only_the_class():
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, (60, 5))
    labels = np.arange(60) % 3
    D = OptimalDenoiser(y, labels, conditional=True)
    x = rng.normal(size=(9, 5))
    lab = np.array([0, 1, 2] * 3)
    sigma = np.full(9, 0.7)
    out = D(torch.from_numpy(x), torch.from_numpy(sigma), torch.from_numpy(lab)).numpy()
    for i in range(9):
        members = y[labels == lab[i]]
        np.testing.assert_allclose(out[i], direct(x[i : i + 1], sigma[i : i + 1], members)[0][0], atol=1e-10)
    with pytest.raises(InputError, match="^labels:"):
        D(torch.from_numpy(x), torch.from_numpy(sigma), None)


@pytest.mark.parametrize("size", [64, 1024])
def test_optimum_sampler_memorizes_digits(size):
    train = class_balanced_subset(load_source("digits"), size, exact=False)
    gen = sample(OptimalDenoiser(train), 200, train.shape, seed=1)
    assert memorization(train, to_uint8(gen.numpy())).ratio >= 0.99


def test_conditional_optimum_samples_the_requested_class():
    train = class_balanced_subset(load_source("digits"), 100)
    labels = np.arange(50) % 10
    gen = sample(OptimalDenoiser(train, conditional=True), 50, train.shape, labels=labels, seed=2)
    result = memorization(train, to_uint8(gen.numpy()))
    assert result.ratio >= 0.99
    np.testing.assert_array_equal(train.labels[result.idx1], labels)


@pytest.mark.parametrize("log_tau", [-1000.0, -905.0, -800.0, -600.0])
def test_floor_given_by_its_logarithm(log_tau):
    """log_eb takes ln τ, so floors below e^-745 (0.0 as a float64) stay usable: in 800 dimensions at
    σ = 1, with x 1.5 noise-σ from its training point, ln S ≈ -‖x - y‖²/2 is near -900, so
    ln τ = -1000 leaves the weights alone, -905 damps some and -800 or -600 damp them all."""
    rng = np.random.default_rng(3)
    y = rng.uniform(-1, 1, (12, 800))
    x = y[:5] + rng.normal(0, 1.5, (5, 800))
    sigma = np.full(5, 1.0)
    out = OptimalDenoiser(y, regularize=("log_eb", log_tau))(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    d2 = ((x[:, None, :] - y[None]) ** 2).sum(-1)
    ell = -d2 / 2
    w = np.exp(ell - np.maximum(logsumexp(ell, axis=1), log_tau)[:, None])
    np.testing.assert_allclose(out, x + (w[:, :, None] * (y[None] - x[:, None])).sum(1), atol=1e-9)
    if log_tau > -700:  # representable: the same as the floor given directly
        same = OptimalDenoiser(y, regularize=("eb", np.exp(log_tau)))(torch.from_numpy(x), torch.from_numpy(sigma))
        np.testing.assert_allclose(out, same.numpy(), atol=1e-12)


def test_parse_regularize_flag():
    assert parse_regularize_flag("log_eb:-800") == ("log_eb", -800.0)
    assert parse_regularize_flag("tikhonov:0.01") == ("tikhonov", 0.01)
    assert parse_regularize_flag("tikhonov_time:0.5") == ("tikhonov_time", 0.5)
    assert parse_regularize_flag("eb:1e-5") == ("eb", 1e-5)
    assert parse_regularize_flag(None) is None
    for bad in ["tikhonov", "foo:1", "eb:0", "tikhonov:-1", "tikhonov_time:-1", "eb:x", "log_eb:inf", "log_eb:x"]:
        with pytest.raises(InputError, match="^regularize:"):
            parse_regularize_flag(bad)
