"""EDM samplers over an analytic denoiser whose probability-flow ODE has a closed-form solution."""

import math

import numpy as np
import pytest
import torch

from diffmem.errors import InputError
from diffmem.sampling import sample, sample_generators, time_steps


def test_time_steps_formula():
    t = time_steps(18).numpy()
    i = np.arange(18)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(t[:-1], expected, rtol=1e-14)
    assert t[-1] == 0 and t[0] == pytest.approx(80) and t[-2] == pytest.approx(0.002)


class GaussianDenoiser:
    """Data N(0, s²I): D(x; σ) = s²/(s²+σ²)·x; the ODE maps x(σmax) to x(0) = x·s/√(s²+σmax²)."""

    def __init__(self, s):
        self.s2 = s * s
        self.calls = 0

    def __call__(self, x, sigma, labels=None):
        self.calls += 1
        return self.s2 / (self.s2 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2) * x


def _exact_endpoint(num, shape, seed, s):
    gens = sample_generators(seed, range(num))
    x0 = torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in gens]) * 80.0
    return (x0 * s / math.sqrt(s * s + 80.0**2)).float()


def test_heun_is_second_order_and_beats_euler():
    """On this ODE Heun's error at 18 EDM steps is a few percent and falls ~16x when the steps
    quadruple (second order); Euler's is larger and falls ~4x (first order)."""
    s, shape = 0.5, (1, 4, 4)
    exact = _exact_endpoint(16, shape, 3, s)

    def err(sampler, steps):
        x = sample(GaussianDenoiser(s), 16, shape, seed=3, steps=steps, sampler=sampler)
        return ((x - exact).abs().max() / exact.abs().max()).item()

    heun18, heun72 = err("heun", 18), err("heun", 72)
    euler18, euler72 = err("euler", 18), err("euler", 72)
    assert heun18 < 0.07 and heun18 < euler18 / 2
    assert heun18 / heun72 > 10
    assert 2.5 < euler18 / euler72 < 6


def test_evaluation_counts():
    D = GaussianDenoiser(0.5)
    sample(D, 3, (2,), steps=10, batch_size=3)
    assert D.calls == 2 * 10 - 1
    D = GaussianDenoiser(0.5)
    sample(D, 3, (2,), steps=10, sampler="euler", batch_size=3)
    assert D.calls == 10


@pytest.mark.parametrize("sampler", ["heun", "sde"])
def test_samples_do_not_depend_on_batching(sampler):
    D = GaussianDenoiser(0.7)
    a = sample(D, 10, (3,), seed=5, batch_size=10, sampler=sampler)
    b = sample(D, 10, (3,), seed=5, batch_size=3, sampler=sampler)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = sample(D, 10, (3,), seed=6, batch_size=10, sampler=sampler)
    assert not torch.equal(a, c)


def test_sde_sampler_adds_noise_and_still_matches_the_distribution():
    D = GaussianDenoiser(0.5)
    det = sample(D, 2000, (2,), seed=0)
    sde = sample(D, 2000, (2,), seed=0, sampler="sde", steps=64, s_churn=30)
    assert not torch.equal(det, sde)
    assert sde.std().item() == pytest.approx(0.5, rel=0.05)  # s_noise = 1.003 inflates it slightly


def test_labels_reach_the_denoiser():
    seen = []

    def D(x, sigma, labels=None):
        seen.append(labels.clone())
        return torch.zeros_like(x)

    sample(D, 5, (1,), labels=[4, 3, 2, 1, 0], steps=2, batch_size=2)
    assert torch.cat(seen[::3]).tolist() == [4, 3, 2, 1, 0]


def test_bad_arguments():
    D = GaussianDenoiser(1.0)
    with pytest.raises(InputError, match="--num"):
        sample(D, 0, (1,))
    with pytest.raises(InputError, match="--sampler"):
        sample(D, 1, (1,), sampler="ddim")
    with pytest.raises(InputError, match="--steps"):
        sample(D, 1, (1,), steps=0)
    with pytest.raises(InputError, match="--labels"):
        sample(D, 3, (1,), labels=[0, 1])


def test_noise_range_of_the_denoiser_is_respected():
    """A VP-trained net knows σ only in [σ(ε_t), σ(1)]: the sampler clamps its schedule (as EDM)."""
    seen = []

    class Limited(GaussianDenoiser):
        sigma_min, sigma_max = 0.01, 20.0

        def __call__(self, x, sigma, labels=None):
            seen.append(float(sigma[0]))
            return super().__call__(x, sigma, labels)

    sample(Limited(0.5), 2, (3,), steps=6)
    assert max(seen) == pytest.approx(20.0) and min(seen) == pytest.approx(0.01)
