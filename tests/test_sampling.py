"""EDM samplers over an analytic denoiser whose probability-flow ODE has a closed-form solution."""

import math

import numpy as np
import pytest
import torch

from diffmem.errors import InputError
from diffmem.denoisers.protocol import denoiser_from_function
from diffmem.sampling import euler, heun, sample, sample_generators, stochastic, time_steps


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
    cases = [(dict(num=0), "num"), (dict(sampler="ddim"), "sampler"), (dict(steps=0), "steps"),
             (dict(num=3, labels=[0, 1]), "labels"), (dict(sigma_max=math.inf), "sigma_max"),
             (dict(sigma_max=1e-3), "sigma_max"), (dict(rho=math.nan), "rho"), (dict(rho=0), "rho"),
             (dict(rho=-7), "rho"), (dict(sampler="sde", s_churn=math.nan), "s_churn"),
             (dict(sampler="sde", s_churn=-100), "s_churn"), (dict(s_churn=10), "s_churn"), (dict(seed=-1), "seed"),
             (dict(num=10**12), "num"), (dict(shape=(2,)), "shape")]
    for kwargs, param in cases:
        kwargs = {"num": 1, **kwargs}
        shape = kwargs.pop("shape", (1,))
        with pytest.raises(InputError) as err:
            sample(D, kwargs.pop("num"), shape, **kwargs) if shape != (2,) else \
                sample(denoiser_from_function(D, (1,)), 1, shape)
        assert err.value.param == param, (kwargs, str(err.value))


def test_noise_range_of_the_denoiser_is_respected():
    """A VP-trained net knows σ only in [σ(ε_t), σ(1)]: the sampler clamps its schedule (as EDM),
    and refuses a requested range outside it instead of sampling a flipped schedule."""
    seen = []

    def fn(x, sigma, labels=None):
        seen.append(float(sigma[0]))
        return GaussianDenoiser(0.5)(x, sigma)

    limited = denoiser_from_function(fn, (3,), num_classes=0, sigma_min=0.01, sigma_max=20.0)
    sample(limited, 2, steps=6)
    assert max(seen) == pytest.approx(20.0) and min(seen) == pytest.approx(0.01)
    with pytest.raises(InputError) as err:
        sample(limited, 2, sigma_min=0.001, sigma_max=0.005)
    assert err.value.param == "sigma_min/sigma_max"


def test_solvers_are_pure_functions_of_their_latents():
    """sample() = draw per-sample latents, scale by t_0, run the solver: the solvers reproduce it."""
    D, shape = GaussianDenoiser(0.6), (2, 3)
    t = time_steps(7)
    latents = torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in sample_generators(4, range(5))])
    torch.testing.assert_close(heun(D, latents * t[0], t).float(), sample(D, 5, shape, seed=4, steps=7), rtol=0, atol=0)
    torch.testing.assert_close(euler(D, latents * t[0], t).float(),
                               sample(D, 5, shape, seed=4, steps=7, sampler="euler"), rtol=0, atol=0)


def _churned_reference(x, t, s_churn, s_min, s_max, s_noise, noise):
    """EDM Algorithm 2 for D = 0, written out independently: with D = 0 the direction is x/σ, so an
    Euler step, and its Heun correction, both scale x by t_next / t_hat."""
    n = len(t) - 1
    for i in range(n):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_min <= t[i] <= s_max else 0.0
        t_hat = t[i] * (1 + gamma)
        x = x + math.sqrt(t_hat ** 2 - t[i] ** 2) * s_noise * noise
        x = x * t[i + 1] / t_hat
    return x


@pytest.mark.parametrize("s_churn,s_min,s_max", [(2.0, 0.0, math.inf),  # γ = 2/8 = 0.25 < √2 - 1
                                                  (80.0, 0.0, math.inf),  # the cap √2 - 1 binds
                                                  (80.0, 0.5, 5.0)])  # only inside [S_min, S_max]
def test_stochastic_churn_matches_algorithm_2(s_churn, s_min, s_max):
    t = time_steps(8, 0.1, 10.0)
    zero = lambda x, sigma, labels=None: torch.zeros_like(x)  # noqa: E731
    x0 = torch.full((1, 1), 10.0, dtype=torch.float64)
    ones = lambda like: torch.ones_like(like)  # noqa: E731
    out = stochastic(zero, x0, t, noise=ones, s_churn=s_churn, s_min=s_min, s_max=s_max, s_noise=1.5)
    t_list = t.tolist()
    expected = _churned_reference(10.0, t_list[:-1] + [0.0], s_churn, s_min, s_max, 1.5, 1.0)
    assert out.item() == pytest.approx(expected, abs=1e-12)
    # the last step ends at σ = 0: with D = 0 the image is exactly 0 unless churn happens at the last step
    mid = stochastic(zero, x0, t[:-1], noise=ones, s_churn=s_churn, s_min=s_min, s_max=s_max, s_noise=1.5)
    assert mid.item() == pytest.approx(_churned_reference(10.0, t_list[:-1], s_churn, s_min, s_max, 1.5, 1.0), rel=1e-12)
    assert mid.item() != pytest.approx(_churned_reference(10.0, t_list[:-1], 0.0, s_min, s_max, 1.5, 1.0), rel=1e-6)
